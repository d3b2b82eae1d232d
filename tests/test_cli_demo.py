"""`chargen demo`, the README's first command, for real: the built-in corpus, a (here one-second)
training run of the shape chosen for that budget, and a sample primed with 'def '."""

from __future__ import annotations

import subprocess
from pathlib import Path

from chargen.checkpoint import load_model
from chargen.training.shape import Shape
from tests.helpers import chargen_command


def test_the_demo_trains_on_the_builtin_corpus_and_prints_a_sample(tmp_path: Path) -> None:
    done = subprocess.run(
        [*chargen_command(), "demo", "--max-time", "1s", "--threads", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    corpus, checkpoint = tmp_path / "corpora" / "stdlib.txt", tmp_path / "checkpoints" / "stdlib.pt"
    size = corpus.stat().st_size
    assert size > 500_000 and "def " in corpus.read_text(encoding="utf-8")[:100_000]
    assert f"built-in corpus: {Path('corpora') / 'stdlib.txt'} ({size:,} bytes" in done.stdout
    assert "budget 1s" in done.stdout and "done: step" in done.stdout
    head = f"--- sample from {Path('checkpoints') / 'stdlib.pt'} (primed with 'def ') ---\ndef "
    assert head in done.stdout
    assert len(done.stdout.split(head, 1)[1].rstrip("\n")) >= 590  # 600 characters, a few may be line ends
    # A one-second budget buys the cheapest shape (chargen.training.shape); the file holds it.
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("shape ")]
    config = load_model(checkpoint).model.config
    chosen = Shape(config.layers, config.hidden, dropout=config.dropout, weight_drop=config.weight_drop)
    assert line.startswith(f"shape {chosen} for this CPU and 1s:")
