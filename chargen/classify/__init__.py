"""Text classification with character-level language models, two ways: by compression (one
fine-tuned language model per class; the class whose model needs the fewest bits wins) and
discriminatively (the language model's LSTM with a classification head)."""
