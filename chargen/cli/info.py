"""`chargen info`: what a checkpoint holds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from chargen.cli.common import console


def info(checkpoint: Annotated[Path, typer.Argument(help="A chargen checkpoint.")]) -> None:
    """What a checkpoint holds: model, tokenizer, training, metrics."""
    import torch
    from rich.table import Table

    from chargen.checkpoint import load_model
    from chargen.cli.common import pin_threads
    from chargen.generation import fused
    from chargen.generation.kernels import choose_kernel

    threads = pin_threads(None)
    loaded = load_model(checkpoint)
    kernel = choose_kernel(loaded.model.eval(), torch.device("cpu"))
    p = loaded.payload
    m, metrics, corpus = p["model_config"], p["metrics"], p.get("corpus", {})
    table = Table(title=str(checkpoint), show_header=False)
    rows = [
        (
            "model",
            f"{m['layers']}×{m['hidden']} {m['cell'].upper()}, embed {loaded.model.config.embed_dim}, "
            f"dropout {loaded.model.config.dropout}, weight drop {loaded.model.config.weight_drop}, "
            f"tied {m['tie_weights']}",
        ),
        ("output layer", loaded.model.config.describe_output()),
        ("parameters", f"{loaded.model.num_parameters():,}"),
        ("tokenizer", f"{loaded.tokenizer.kind}, vocab {loaded.tokenizer.vocab_size}"),
        ("steps", f"{metrics.get('step')}  (epoch {metrics.get('epoch', 0):.2f})"),
        ("val bpc", _num(metrics.get("val_bpc")) + _part(metrics)),
        ("best val bpc", _num(metrics.get("best_val_bpc")) + _part(metrics)),
        ("result bpc", _num(metrics.get("result_bpc")) + "  (best model, whole validation tail)"),
        ("val bpc curve", _curve(p.get("history"))),
        ("training time", f"{metrics.get('elapsed', 0):.0f}s"),
        ("corpus", f"{corpus.get('source', '?')} ({corpus.get('chars', 0):,} chars)"),
        ("resumable", "yes" if "resume" in p else "no (best checkpoint; resume uses *.last.pt)"),
        ("format", f"{p['format']} v{p['version']}"),
        ("sampling step", f"{kernel.describe()} · {threads} threads on this machine"),
        ("native step", fused.describe()),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console().print(table)


def _num(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.4f}"


def _curve(history: list[dict[str, float]] | None) -> str:
    """The validation bpc of every evaluation as a sparkline, first and last value beside it."""
    from chargen.analysis.history import sparkline

    if history is None:
        return "- (saved by an older chargen; see its *.metrics.jsonl)"
    values = [r.get("val_bpc", math.nan) for r in history]
    line = sparkline(values)
    if not line:
        return "-"
    return f"{_num(values[0])} {line} {_num(values[-1])}  ({len(values)} evaluations)"


def _part(metrics: dict[str, Any]) -> str:
    """What the evaluations during the run read, where that was less than the whole tail."""
    part, whole = metrics.get("eval_chars"), metrics.get("val_chars")
    return f"  (over {part:,} of {whole:,} validation chars)" if part and whole and part < whole else ""
