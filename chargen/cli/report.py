"""`chargen report`: one self-contained HTML page of a model reading a text."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from chargen.cli.common import AllowBinary, ReplaceInvalid, pin_threads
from chargen.errors import ChargenError

if TYPE_CHECKING:
    from chargen.checkpoint import LoadedModel

DEFAULT_MAX_CHARS = 100_000


def report(
    checkpoint: Annotated[Path, typer.Argument(help="A chargen checkpoint.")],
    text_file: Annotated[Path, typer.Argument(help="A UTF-8 text for the model to read.")],
    out: Annotated[Path | None, typer.Option(help="The HTML file to write [TEXT_FILE's name + .html, here].")] = None,
    compare: Annotated[
        Path | None, typer.Option(help="Another checkpoint whose memory curve is drawn beside this one's.")
    ] = None,
    max_chars: Annotated[int, typer.Option(help="Read at most this many characters of the text.")] = DEFAULT_MAX_CHARS,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    replace_invalid: ReplaceInvalid = False,
    allow_binary: AllowBinary = False,
) -> None:
    """Surprise per character, cells that track the text, gate saturation and memory reach, as HTML."""
    pin_threads(threads)
    from chargen.analysis.cells import best_cells, text_properties, trace_layers
    from chargen.analysis.reach import gradient_reach
    from chargen.analysis.surprise import read_surprise
    from chargen.checkpoint import load_model
    from chargen.data.corpus import ReadOptions, read_corpus
    from chargen.device import select_device
    from chargen.report.html import ReportInput, write_report

    if max_chars < 2:
        raise ChargenError(f"--max-chars must be at least 2, got {max_chars}")
    loaded = load_model(checkpoint)
    other = load_model(compare) if compare is not None else None
    full = read_corpus(text_file, ReadOptions("replace" if replace_invalid else "strict", allow_binary=allow_binary))
    text = full[:max_chars]
    if len(full) > len(text):
        print(f"reading the first {len(text):,} of {len(full):,} characters (--max-chars)", file=sys.stderr)
    ids = loaded.tokenizer.encode(text)
    if len(ids) < 3:
        raise ChargenError(f"{text_file} is too short for a report: it needs at least three tokens")
    device = select_device("auto")
    model = loaded.model.to(device)
    surprise = read_surprise(model, loaded.tokenizer, text, ids)
    traces = trace_layers(model, ids)
    reach = {_label(checkpoint, loaded): gradient_reach(model, ids)}
    if other is not None and compare is not None:
        label = _label(compare, other)
        label = f"{label} [--compare]" if label in reach else label
        reach[label] = gradient_reach(other.model.to(device), other.tokenizer.encode(text))
    out = out or Path(f"{text_file.stem}.html")
    report_input = ReportInput(
        title=f"{checkpoint.name} reading {text_file.name}",
        model=describe(loaded),
        cell=loaded.model.config.cell,
        source=str(text_file),
        total_characters=len(full),
        surprise=surprise,
        vocabulary=[b.decode("utf-8", "replace") for b in loaded.tokenizer.token_bytes],
        traces=traces,
        matches=best_cells(traces, text_properties(surprise.pieces)),
        reach=reach,
    )
    write_report(report_input, out)
    print(f"{surprise.bpc:.4f} bpc over {surprise.characters:,} characters; wrote {out}")


def describe(loaded: LoadedModel) -> str:
    c = loaded.model.config
    return f"{c.layers}×{c.hidden} {c.cell.upper()}, {loaded.tokenizer.kind} vocab {loaded.tokenizer.vocab_size}"


def _label(path: Path, loaded: LoadedModel) -> str:
    return f"{path.stem} ({describe(loaded)})"
