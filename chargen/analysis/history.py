"""A run's training history: one record per evaluation (step, train/val bpc, learning rate,
elapsed seconds), read from the checkpoint that carries it or from a `*.metrics.jsonl` log."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from chargen.errors import ChargenError

SPARK = "▁▂▃▄▅▆▇█"


@dataclass
class History:
    name: str  # how legends name the run
    records: list[dict[str, float]]

    def series(self, key: str) -> list[float]:
        return [float(r.get(key, math.nan)) for r in self.records]

    def best(self) -> dict[str, float] | None:
        """The evaluation with the lowest validation bpc."""
        scored = [r for r in self.records if math.isfinite(r.get("val_bpc", math.nan))]
        return min(scored, key=lambda r: r["val_bpc"]) if scored else None


def run_name(path: Path) -> str:
    """diary.pt, diary.last.pt and diary.metrics.jsonl all belong to the run "diary"."""
    name = path.name
    for suffix in (".metrics.jsonl", ".last.pt", ".pt", ".jsonl"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return path.stem


def read_history(path: Path) -> History:
    """From a checkpoint, or from a metrics log when the name ends in .jsonl."""
    records = _read_log(path) if path.suffix == ".jsonl" else _read_checkpoint(path)
    if not records:
        raise ChargenError(f"{path} holds no evaluations yet: train longer than one --eval-every")
    return History(run_name(path), records)


def _read_checkpoint(path: Path) -> list[dict[str, float]]:
    from chargen.checkpoint import load_checkpoint

    payload = load_checkpoint(path)
    if "history" not in payload:
        log = path.with_name(f"{run_name(path)}.metrics.jsonl")
        hint = f"; plot its log instead: {log}" if log.is_file() else ""
        raise ChargenError(f"{path} was saved by an older chargen and carries no training history{hint}")
    return payload["history"]


def _read_log(path: Path) -> list[dict[str, float]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ChargenError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ChargenError(f"cannot read {path}: {err}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ChargenError(f"{path}, line {number}: not a JSON record of a chargen metrics log") from None
        if not isinstance(record, dict) or "step" not in record:
            raise ChargenError(f"{path}, line {number}: not a record of a chargen metrics log (no step)")
        records.append({k: v if isinstance(v, (int, float)) else math.nan for k, v in record.items()})
    return records


def sparkline(values: list[float], width: int = 40) -> str:
    """Values as one line of block characters, low to high, resampled to at most `width`
    (the last value always shown); non-finite values are blanks."""
    if len(values) > width:
        values = [values[round(i * (len(values) - 1) / (width - 1))] for i in range(width)]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    low, high = min(finite), max(finite)
    span = high - low or 1.0
    return "".join(SPARK[round((v - low) / span * (len(SPARK) - 1))] if math.isfinite(v) else " " for v in values)
