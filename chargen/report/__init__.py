"""Self-contained HTML reports of a model reading a text."""
