"""Training: assembling a run from the user's options, and the loop itself."""
