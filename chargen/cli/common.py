"""What every command does the same way: take only the options the user gave, pin threads."""

from __future__ import annotations

import os
from typing import Any


def given(**options: Any) -> dict[str, Any]:
    """The options the user set (typer gives None for the others), so config defaults apply."""
    return {k: v for k, v in options.items() if v is not None}


def pin_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads before torch does any work (OMP_NUM_THREADS is honoured too)."""
    from chargen.device import set_threads

    if threads:
        set_threads(threads)
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():
        set_threads(int(os.environ["OMP_NUM_THREADS"]))
