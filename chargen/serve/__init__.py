"""`chargen serve`: models over HTTP (chargen.cli.serve starts it)."""
