"""From a trained model to text: fast one-token steps, token choice, decoding, the sampler."""
