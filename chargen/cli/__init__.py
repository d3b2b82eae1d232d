"""The command line and the terminal: one module per command, registered in chargen.cli.app."""
