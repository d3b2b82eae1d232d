"""What many test modules share: texts, the tiny model and training settings, the CLI run in a
subprocess or in this process, the one-line error check. Test modules import from here (and from
tests/ranks.py for real torchrun ranks), never from each other (tests/test_layout.py checks)."""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from chargen.generation.inference import PRECISIONS, precision_usable
from chargen.generation.products import KINDS, int8_product
from chargen.training.events import Callbacks, EvalEvent, StepEvent
from chargen.training.run import TrainRequest, prepare
from chargen.training.trainer import Trainer

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"
needs_shakespeare = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/corpora/tinyshakespeare.txt absent")

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

CHINESE = "床前明月光，疑是地上霜。举头望明月，低头思故乡。\n春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。\n"


def needs_precision(precision: str) -> None:
    """Skip where the sampling step in `precision` does not run (tests/test_fused.py checks that
    the native step is there wherever it should be)."""
    if not precision_usable(precision):
        pytest.skip(f"the {precision} step does not run on this machine")


def precisions_here(*, reduced: bool = False) -> list[str]:
    """The sampling steps this CPU runs (the others are not offered here: AVX2-only CPUs have no
    exact torch int8 product and no bf16), for parametrising; `reduced` leaves out fp32.
    tests/test_fused.py fails where the native step should run and does not."""
    return [p for p in PRECISIONS if precision_usable(p) and not (reduced and p == "fp32")]


def exact_int8_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Torch's int8 step where its `_int_mm` is exact. Where it saturates (oneDNN without VNNI:
    AVX2-only CPUs, where chargen does not offer it), the same step with the integer sums done in
    float64, so the native step is still compared with the int8 step's numbers there."""
    if KINDS["int8"].usable():
        return
    exact = int8_product(lambda x, w: (x.double() @ w.double()).to(torch.int32))
    monkeypatch.setitem(KINDS, "int8", replace(KINDS["int8"], build=exact, usable=lambda: True))


def int8_step() -> str:
    """An int8 step this machine runs, for a subprocess (which no monkeypatch reaches)."""
    usable = [p for p in ("int8", "int8-fused", "int8-fbgemm") if precision_usable(p)]
    if not usable:
        pytest.skip("no int8 step runs on this machine")
    return usable[0]


class ScriptedLoad:
    """What chargen.threads reads about the machine, as a test states it: other processes keep
    `busy` CPUs busy, and the clock moves `tick` seconds at each look. Code that follows the load
    (the step's measurement, thread sharing) then behaves the same on a quiet or a busy machine."""

    def __init__(self, busy: float = 0.0, tick: float = 0.5) -> None:
        self.busy, self.tick = busy, tick
        self.clock = self.others = 0.0

    def now(self) -> float:
        self.clock += self.tick
        self.others += self.busy * self.tick
        return self.clock

    def others_seconds(self, cpus: set[int]) -> float | None:
        return self.others


ALPHABETS = {
    "latin": "abcdefghijklmnopqrstuvwxyz",
    "cyrillic": "абвгдежзийклмнопрстуфхцчшщыэюя",
    "greek": "αβγδεζηθικλμνξοπρστυφχψω",
}


def latin_and_cyrillic(per_class: int = 40, seed: int = 0, scripts: int = 2) -> list[tuple[str, str]]:
    """(label, text) pairs any classifier must tell apart: random words in Latin or Cyrillic (or,
    with scripts=3, Greek) letters."""
    rng = random.Random(seed)
    alphabets = dict(list(ALPHABETS.items())[:scripts])
    examples = []
    for label, letters in alphabets.items():
        for _ in range(per_class):
            words = ("".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(rng.randint(3, 8)))
            examples.append((label, " ".join(words)))
    rng.shuffle(examples)
    return examples


def big_corpus(path: Path, megabytes: int) -> Path:
    line = "Whan that Aprille with his shoures soote, 床前明月光，疑是地上霜。\n"
    path.write_text(line * (megabytes * 1_000_000 // len(line.encode())), encoding="utf-8")
    return path


# --- the tiny model: one definition, each test's differences given as overrides -------------------

TINY_MODEL = {"layers": 1, "hidden": 32, "dropout": 0.0}
TINY_TRAIN = {
    "batch_size": 8,
    "seq_len": 32,
    "max_steps": 40,
    "max_time": 0,
    "eval_every": 20,
    "warmup_steps": 5,
    "sample_chars": 0,
    "precision": "fp32",
}


def tiny_model(**overrides: Any) -> dict[str, Any]:
    return {**TINY_MODEL, **overrides}


def tiny_train(**overrides: Any) -> dict[str, Any]:
    return {**TINY_TRAIN, **overrides}


_FLAGS = {"warmup_steps": "--warmup"}


def tiny_flags(**overrides: Any) -> list[str]:
    """The tiny model as `chargen train` options (the CLI's own defaults for dropout and the rest);
    an override of None leaves that option out."""
    options = {"layers": 1, "hidden": 32, "batch_size": 8, "seq_len": 32, "threads": 1, **overrides}
    flags: list[str] = []
    for name, value in options.items():
        if value is not None:
            flags += [_FLAGS.get(name, "--" + name.replace("_", "-")), str(value)]
    return flags


# A model small enough that a few steps take well under a second.
FAST = tiny_flags(hidden=16, batch_size=4, seq_len=16, max_time=0)


def chargen_command() -> list[str]:
    """How tests run the real CLI in a subprocess."""
    return [sys.executable, "-m", "chargen"]


# --- a training run watched step by step ---------------------------------------------------------


class Recorder(Callbacks):
    def __init__(self, stop_at: int | None = None) -> None:
        self.losses: list[float] = []
        self.evals: list[EvalEvent] = []
        self.messages: list[str] = []
        self.stop_at = stop_at
        self.trainer: Any = None

    def on_step(self, event: StepEvent) -> None:
        self.losses.append(event.loss)
        if event.step == self.stop_at:
            self.trainer.request_stop()

    def on_eval(self, event: EvalEvent) -> None:
        self.evals.append(event)

    def on_message(self, message: str) -> None:
        self.messages.append(message)


# Two small layers with dropout, short windows: what the training and resume tests run.
RECORDED_MODEL = tiny_model(layers=2, hidden=24, dropout=0.1)
RECORDED_TRAIN = tiny_train(batch_size=4, seq_len=16, eval_every=10, lr=3e-3)


def start(corpus: Path, out: Path, recorder: Recorder, resume: bool = False, **train: Any) -> Trainer:
    request = TrainRequest(corpus, out, model=RECORDED_MODEL, train={**RECORDED_TRAIN, **train}, resume=resume)
    trainer = prepare(request, recorder)
    recorder.trainer = trainer
    return trainer


# --- the CLI in this process ---------------------------------------------------------------------

RAW_MESSAGES = ("Traceback", "EOFError", "KeyError", "central directory", "enforce fail", "UnpicklingError")


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: object) -> Outcome:
    """`chargen ARGS` in this process: quick, and monkeypatch can reach inside."""
    from chargen.cli.app import main

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["chargen", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        main()
    out = capsys.readouterr()
    code = exited.value.code
    return Outcome(code if isinstance(code, int) else (0 if code is None else 1), out.out, out.err)


def assert_clear_error(outcome: Outcome, *fragments: str, code: int = 1) -> str:
    """Exactly one line on stderr, starting `Error: `, naming what it must; the exit code."""
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), outcome.stderr
    assert not any(raw in outcome.stderr for raw in RAW_MESSAGES), outcome.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert outcome.code == code, (outcome.code, lines[0])
    return lines[0]
