"""`chargen demo`: the two-command path from a fresh clone to generated text, on a corpus every
Python installation has."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chargen.cli.common import pin_threads
from chargen.cli.train import run_training
from chargen.config import parse_duration


def demo(
    max_time: Annotated[str, typer.Option(help="Training time budget.")] = "3m",
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
) -> None:
    """Train on the built-in corpus (Python's own standard library) and print a sample."""
    pin_threads(threads)
    from chargen.data.builtin import write_stdlib_corpus

    corpus = write_stdlib_corpus(Path("corpora") / "stdlib.txt")
    out = Path("checkpoints") / "stdlib.pt"
    print(f"built-in corpus: {corpus} ({corpus.stat().st_size:,} bytes of Python's standard library)")
    from chargen.checkpoint import load_model
    from chargen.config import SampleConfig
    from chargen.generation.sampler import Sampler
    from chargen.training.run import TrainRequest

    run_training(TrainRequest(corpus=corpus, out=out, train={"max_time": parse_duration(max_time)}), quiet=False)

    loaded = load_model(out)
    text = Sampler(loaded.model, loaded.tokenizer).generate(
        ["def "], SampleConfig(length=600, temperature=0.7, seed=1)
    )[0]
    print(f"\n--- sample from {out} (primed with 'def ') ---\ndef {text}")
