"""From the user's files to training windows: corpus -> tokenizer -> ids -> batches."""
