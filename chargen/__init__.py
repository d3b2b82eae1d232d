"""chargen: character-level text generation with stacked LSTMs."""

__version__ = "0.1.0"
