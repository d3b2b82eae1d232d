"""Shared fixtures: small real texts and one tiny trained checkpoint for the whole session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from chargen.generation.inference import precision_usable

# One intra-op thread: with two cores and other processes busy, torch's default of two threads
# can run many times slower. Subprocesses inherit the environment variable.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"

ENGLISH = """\
Whan that Aprille with his shoures soote
The droghte of March hath perced to the roote,
And bathed every veyne in swich licour
Of which vertu engendred is the flour;
Whan Zephirus eek with his sweete breeth
Inspired hath in every holt and heeth
The tendre croppes, and the yonge sonne
Hath in the Ram his halve cours yronne,
And smale foweles maken melodye,
That slepen al the nyght with open ye
"""


def needs_precision(precision: str) -> None:
    """Skip where the sampling step in `precision` does not run (tests/test_fused.py checks that
    the native step is there wherever it should be)."""
    if not precision_usable(precision):
        pytest.skip(f"the {precision} step does not run on this machine")


CHINESE = "床前明月光，疑是地上霜。举头望明月，低头思故乡。\n春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。\n"


@pytest.fixture(autouse=True)
def _chargen_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep user files (REPL history and the like) out of the real home directory."""
    monkeypatch.setenv("CHARGEN_HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="session")
def english_text() -> str:
    return ENGLISH * 30


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory, english_text: str) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "chaucer.txt"
    path.write_text(english_text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    """A 1×32 LSTM trained for 60 steps on the Chaucer text: small, real, and already learning."""
    from chargen.training.run import TrainRequest, prepare

    out = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    request = TrainRequest(
        corpus=corpus_file,
        out=out,
        model={"layers": 1, "hidden": 32, "dropout": 0.0},
        train={
            "batch_size": 8,
            "seq_len": 32,
            "max_steps": 60,
            "max_time": 0,
            "eval_every": 30,
            "warmup_steps": 5,
            "sample_chars": 0,
            "precision": "fp32",
        },
    )
    prepare(request).run()
    return out


def chargen_command() -> list[str]:
    """How tests run the real CLI in a subprocess."""
    return [sys.executable, "-m", "chargen"]


needs_shakespeare = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/corpora/tinyshakespeare.txt absent")


ALPHABETS = {
    "latin": "abcdefghijklmnopqrstuvwxyz",
    "cyrillic": "абвгдежзийклмнопрстуфхцчшщыэюя",
    "greek": "αβγδεζηθικλμνξοπρστυφχψω",
}


def latin_and_cyrillic(per_class: int = 40, seed: int = 0, scripts: int = 2) -> list[tuple[str, str]]:
    """(label, text) pairs any classifier must tell apart: random words in Latin or Cyrillic (or,
    with scripts=3, Greek) letters."""
    import random

    rng = random.Random(seed)
    alphabets = dict(list(ALPHABETS.items())[:scripts])
    examples = []
    for label, letters in alphabets.items():
        for _ in range(per_class):
            words = ("".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(rng.randint(3, 8)))
            examples.append((label, " ".join(words)))
    rng.shuffle(examples)
    return examples
