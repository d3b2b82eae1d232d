"""What every benchmark prints beside its figures: the CPU they were measured on."""

from __future__ import annotations

import platform
import subprocess


def cpu_model() -> str:
    """lscpu's model name (what the figures in the README are quoted with)."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown CPU"
