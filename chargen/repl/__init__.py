"""The REPL's logic: commands and the session. Its terminal side lives in chargen.cli."""
