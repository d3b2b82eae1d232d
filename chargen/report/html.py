"""`chargen report`'s page: the analyses of chargen.analysis gathered into one JSON document and
poured into one self-contained HTML file (the template's own script draws it; nothing is
fetched from the network)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from chargen.analysis.cells import GATE_NAMES, LayerTrace, Match
from chargen.analysis.surprise import Surprise
from chargen.atomic import replacing

CELL_EXCERPT = 3000  # tokens of the text shown under the cells' colour strips


@dataclass
class ReportInput:
    title: str
    model: str  # one-line description of the model
    cell: str  # lstm, gru or rnn
    source: str
    total_characters: int  # of the whole file, before any cap
    surprise: Surprise
    vocabulary: list[str]  # each token id's text, for the guesses
    traces: list[LayerTrace]
    matches: list[Match]
    reach: dict[str, list[float]]  # model name -> gradient norm at lag k


def _round(value: float, places: int = 3) -> float | None:
    return round(value, places) if math.isfinite(value) else None


def report_data(r: ReportInput) -> dict[str, Any]:
    s = r.surprise
    excerpt = min(CELL_EXCERPT, len(s.pieces))
    return {
        "title": r.title,
        "model": r.model,
        "source": r.source,
        "characters": len("".join(s.pieces)),
        "total_characters": r.total_characters,
        "bpc": round(s.bpc, 4),
        "pieces": s.pieces,
        "bits": [_round(b, 2) for b in s.bits],
        "guesses": [[x for i, p in g for x in (i, round(p, 3))] for g in s.guesses],
        "vocabulary": r.vocabulary,
        "lines": [_round(b) for b in s.line_bpc()],
        "cell_kind": "tanh(c), the LSTM cell state" if r.cell == "lstm" else f"h, the {r.cell.upper()} hidden state",
        "cell_excerpt": excerpt,
        "cells": [
            {
                "property": m.prop,
                "layer": m.layer + 1,
                "cell": m.cell,
                "r": round(m.correlation, 3),
                "values": [round(float(v), 2) for v in r.traces[m.layer].activations[:excerpt, m.cell]],
            }
            for m in r.matches
        ],
        "gates": [
            {
                "layer": layer + 1,
                "gates": {
                    name: {"left": t.left[name].round(3).tolist(), "right": t.right[name].round(3).tolist()}
                    for name in GATE_NAMES[r.cell]
                },
            }
            for layer, t in enumerate(r.traces)
        ],
        "reach": [{"name": name, "values": [_round(v, 12) for v in values]} for name, values in r.reach.items()],
    }


def render(data: dict[str, Any]) -> str:
    """The template with the data inlined; `</` is escaped so no text can close the script."""
    template = files("chargen.report").joinpath("template.html").read_text(encoding="utf-8")
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    return template.replace("/*REPORT_DATA*/null", payload).replace("REPORT_TITLE", _escape(data["title"]))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_report(r: ReportInput, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out, "w", encoding="utf-8") as f:
        f.write(render(report_data(r)))
