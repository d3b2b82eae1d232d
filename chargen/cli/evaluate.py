"""`chargen eval`: bits per character of any text under a model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from chargen.cli.common import AllowBinary, Quiet, ReplaceInvalid, pin_threads
from chargen.errors import ChargenError


def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A chargen checkpoint.")],
    text_file: Annotated[Path, typer.Argument(help="A UTF-8 text file (or a folder of them) to score.")],
    format: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    replace_invalid: ReplaceInvalid = False,
    allow_binary: AllowBinary = False,
    quiet: Quiet = False,
) -> None:
    """Bits per character of TEXT_FILE under the model (state carried over the whole file). The
    file is streamed through the token cache; progress goes to stderr (a bar on a terminal, plain
    lines otherwise, nothing with --quiet)."""
    pin_threads(threads)
    from rich.console import Console

    from chargen.analysis.evaluate import bits_per_char, characters_scored
    from chargen.checkpoint import load_model
    from chargen.cli.progress import WorkProgress
    from chargen.data.corpus import ReadOptions, open_corpus
    from chargen.data.scan import Split
    from chargen.data.tokenized import tokenize
    from chargen.device import select_device

    if format not in ("text", "json"):
        raise ChargenError(f"--format must be text or json, got {format!r}")
    loaded = load_model(checkpoint)
    corpus = open_corpus(text_file, ReadOptions("replace" if replace_invalid else "strict", allow_binary=allow_binary))
    console = Console(stderr=True)
    progress = WorkProgress(console, interactive=sys.stderr.isatty())
    tokens = tokenize(
        corpus,
        Split("none"),
        lambda facts: loaded.tokenizer,
        notify=lambda message: console.print(message, style="yellow", markup=False, highlight=False),
        report=None if quiet else progress.update,
    )
    ids = tokens.ids
    if len(ids) < 2:
        raise ChargenError(f"{text_file} is too short to score: it needs at least two tokens")
    device = select_device("auto")
    chars = characters_scored(loaded.tokenizer, ids)
    scoring = None if quiet else (lambda done, total: progress.update("scoring", done, total, "tokens"))
    bpc = bits_per_char(loaded.model.to(device), ids, chars, device, progress=scoring)
    if format == "json":
        print(
            json.dumps(
                {
                    "checkpoint": str(checkpoint),
                    "file": str(text_file),
                    "bpc": bpc,
                    "characters": chars,
                    "tokens": len(ids),
                }
            )
        )
    else:
        print(f"{bpc:.4f} bpc over {chars:,} characters of {text_file}")
