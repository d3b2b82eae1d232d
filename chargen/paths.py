"""Where chargen keeps the user's files (REPL history, caches): $CHARGEN_HOME when set, else
the platform's own per-user data folder (platformdirs: ~/.local/share/chargen on Linux,
~/Library/Application Support/chargen on macOS, %LOCALAPPDATA%\\chargen on Windows)."""

from __future__ import annotations

import os
from pathlib import Path


def user_data_dir() -> Path:
    if os.environ.get("CHARGEN_HOME"):
        return Path(os.environ["CHARGEN_HOME"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("chargen", appauthor=False))
