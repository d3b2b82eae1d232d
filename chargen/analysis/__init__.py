"""What a trained model says about a text: bits per character, and more."""
