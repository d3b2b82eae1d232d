"""`chargen plot`: training curves of one run or several, from checkpoints or metrics logs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def plot(
    runs: Annotated[list[Path], typer.Argument(help="Checkpoints (*.pt) or metrics logs (*.metrics.jsonl).")],
    out: Annotated[
        Path | None, typer.Option(help="Image to write: .png, .svg or .pdf [the first run's name, .png, beside it].")
    ] = None,
) -> None:
    """Training curves: train and validation bpc against step and wall time, learning rate beneath."""
    from chargen.analysis.curves import plot_histories
    from chargen.analysis.history import read_history, run_name

    histories = [read_history(path) for path in runs]
    out = out or runs[0].with_name(f"{run_name(runs[0])}.png")
    plot_histories(histories, out)
    print(f"wrote {out}")
