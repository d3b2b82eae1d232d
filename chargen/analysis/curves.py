"""Training curves drawn with matplotlib (the optional `plot` extra): bits per character against
step and against wall time, the learning rate beneath, the best point of each run marked."""

from __future__ import annotations

import math
from pathlib import Path

from chargen.analysis.history import History
from chargen.atomic import replacing
from chargen.errors import ChargenError

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ChargenError('plotting needs matplotlib: pip install "chargen[plot]"') from None
    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    return plt


def plot_histories(histories: list[History], out: Path) -> None:
    """One figure for every run (overlaid, with a legend), written atomically to `out`."""
    kind = FORMATS.get(out.suffix.lower())
    if kind is None:
        raise ChargenError(f"{out}: the output's extension chooses the format; use .png, .svg or .pdf")
    plt = _pyplot()
    figure, axes = plt.subplots(
        2, 2, figsize=(11, 6.5), sharex="col", gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    for index, history in enumerate(histories):
        colour = f"C{index}"
        for column, (x_key, scale) in enumerate((("step", 1.0), ("elapsed", 1 / 60))):
            x = [v * scale for v in history.series(x_key)]
            top, bottom = axes[0][column], axes[1][column]
            top.plot(
                x, history.series("train_bpc"), color=colour, linestyle="--", alpha=0.7, label=f"{history.name} train"
            )
            top.plot(x, history.series("val_bpc"), color=colour, marker=".", label=f"{history.name} validation")
            best = history.best()
            if best is not None:
                top.plot([best[x_key] * scale], [best["val_bpc"]], marker="*", markersize=14, color=colour, zorder=3)
                top.annotate(
                    f"{best['val_bpc']:.3f}",
                    (best[x_key] * scale, best["val_bpc"]),
                    xytext=(6, -12),
                    textcoords="offset points",
                    color=colour,
                )
            bottom.plot(x, history.series("lr"), color=colour)
    axes[0][0].set_ylabel("bits per character")
    axes[1][0].set_ylabel("learning rate")
    axes[1][0].set_xlabel("step")
    axes[1][1].set_xlabel("wall time (minutes)")
    axes[0][0].legend(fontsize="small")
    axes[0][0].set_title("against step (★ best validation)")
    axes[0][1].set_title("against wall time")
    for axis in axes.flat:
        axis.grid(alpha=0.3)
    finite = [v for h in histories for v in h.series("val_bpc") + h.series("train_bpc") if math.isfinite(v)]
    if finite:  # the first evaluation of an untrained model would squash the rest of the curve
        low, high = min(finite), sorted(finite)[int(0.95 * (len(finite) - 1))]
        for axis in axes[0]:
            axis.set_ylim(low - 0.05 * (high - low + 0.1), high + 0.1 * (high - low + 0.1))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with replacing(out) as f:
            figure.savefig(f, format=kind, dpi=110)
    except OSError as err:
        raise ChargenError(f"cannot write {out}: {err.strerror or err}") from None
    finally:
        plt.close(figure)
