"""The part of the validation tail evaluations read during a run: chosen for time once, at the
first start, stored with the run, overridden by --eval-chars; the result reads the whole tail."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from chargen.analysis.evaluate import eval_streams, read_bits, total_bits
from chargen.checkpoint import build_model, load_checkpoint, save_checkpoint
from chargen.config import EVAL_ALL, ModelConfig
from chargen.model import CharLM
from chargen.training.evalpart import time_step
from chargen.training.run import TrainRequest, prepare
from chargen.training.trainer import Trainer
from tests.helpers import ENGLISH, Recorder, assert_clear_error, run_cli, tiny_flags, tiny_model, tiny_train

SLOW = 0.01  # seconds per time step of the reading: the whole tail would take ~10 s
FAST = 1e-6


def timer(seconds: float) -> Any:
    """A machine that reads one time step of the evaluation in `seconds`."""
    return lambda *_: seconds


def refuse(*_: object) -> float:
    raise AssertionError("the evaluation was timed again")


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tail of ~12k characters: 16 rows, so that a part is less than all of it."""
    path = tmp_path_factory.mktemp("long") / "long.txt"
    path.write_text(ENGLISH * 300, encoding="utf-8")
    return path


def start(corpus: Path, out: Path, step_timer: Any, resume: bool = False, **train: Any) -> Trainer:
    settings = tiny_train(**{"max_steps": 40, "eval_every": 10, **train})
    request = TrainRequest(corpus, out, model=tiny_model(), train=settings, resume=resume)
    return prepare(request, Recorder(), step_timer=step_timer)


def full_bpc(trainer: Trainer, model: CharLM) -> float:
    """The whole tail read afresh, as `chargen evaluate` would."""
    return total_bits(model, eval_streams(trainer.data.val_ids), trainer.device) / trainer.data.val_chars


def test_the_part_is_chosen_once_stored_and_reused_on_a_resume_elsewhere(long_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    slow = start(long_corpus, out, timer(SLOW), max_steps=20)
    chosen = slow.config.eval_chars
    assert chosen == 4000 and slow.eval_part.per_row == 250  # 16 rows of 250 targets: ~3 s on this machine
    slow.run()
    assert load_checkpoint(tmp_path / "m.last.pt")["train_config"]["eval_chars"] == chosen

    resumed = start(long_corpus, out, refuse, resume=True)  # a faster machine: nothing is timed
    assert resumed.config.eval_chars == chosen and resumed.eval_part == slow.eval_part
    assert resumed.validation.part_streams.spans == slow.validation.part_streams.spans
    assert start(long_corpus, tmp_path / "fast.pt", timer(FAST)).eval_part.per_row is None  # a new run there


def test_an_explicit_part_wins_and_all_reads_everything(long_corpus: Path, tmp_path: Path) -> None:
    given = start(long_corpus, tmp_path / "a.pt", refuse, eval_chars=1600)
    assert given.config.eval_chars == 1600 and given.eval_part.per_row == 100
    assert given.eval_part.chars == 1600  # one character per target
    everything = start(long_corpus, tmp_path / "b.pt", refuse, eval_chars=EVAL_ALL)
    assert everything.eval_part.per_row is None and everything.eval_part.chars == everything.data.val_chars
    given.run()
    with pytest.raises(Exception, match="--eval-chars 2000 differs from the resumed run's 1600"):
        start(long_corpus, tmp_path / "a.pt", refuse, resume=True, eval_chars=2000)


def test_the_result_is_the_best_model_on_the_whole_tail(long_corpus: Path, tmp_path: Path) -> None:
    """Evaluations read the part; the last reads everything, and its part's figure (compared with
    the others) is the one a part-only reading gives."""
    out = tmp_path / "m.pt"
    trainer = start(long_corpus, out, timer(SLOW))
    recorder = trainer.callbacks
    progress = trainer.run()
    best = load_checkpoint(out)
    model = build_model(best, out).model
    assert progress.result_val_loss == pytest.approx(full_bpc(trainer, model), abs=1e-5)
    assert best["metrics"]["result_bpc"] == progress.result_val_loss
    assert best["metrics"]["eval_chars"] == trainer.eval_part.chars < best["metrics"]["val_chars"]
    part_only = total_bits(model, trainer.validation.part_streams, trainer.device) / trainer.eval_part.chars
    assert best["metrics"]["best_val_bpc"] == pytest.approx(part_only, abs=1e-5)
    assert min(e.val_bpc for e in recorder.evals) == best["metrics"]["best_val_bpc"]
    assert abs(progress.result_val_loss - progress.best_val_loss) > 1e-4  # they do read different text


def test_a_run_ended_on_an_older_best_reads_that_model(long_corpus: Path, tmp_path: Path) -> None:
    """Resumed with its budget spent, the run's last evaluation is not the best's: the best
    checkpoint's weights are read over the whole tail, and the figure written into it."""
    out = tmp_path / "m.pt"
    start(long_corpus, out, timer(SLOW), max_steps=20).run()
    best = load_checkpoint(out)
    best["metrics"]["result_bpc"] = math.nan
    save_checkpoint(out, best)
    again = start(long_corpus, out, refuse, resume=True, max_steps=20)
    again.run()
    expected = full_bpc(again, build_model(best, out).model)
    assert again.progress.result_val_loss == pytest.approx(expected, abs=1e-5)
    assert load_checkpoint(out)["metrics"]["result_bpc"] == again.progress.result_val_loss


def test_a_run_from_before_the_choice_resumes_reading_everything(long_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    start(long_corpus, out, timer(SLOW), max_steps=10).run()
    last = load_checkpoint(tmp_path / "m.last.pt")
    del last["train_config"]["eval_chars"]
    save_checkpoint(tmp_path / "m.last.pt", last)
    assert start(long_corpus, out, refuse, resume=True).eval_part.per_row is None


def test_the_part_is_the_first_targets_of_each_row_of_the_whole_reading() -> None:
    """Every evaluation reads the same positions, and one pass over everything gives the part's
    bits too: the same as reading the part alone."""
    torch.manual_seed(0)
    ids = torch.randint(0, 20, (6000,))
    streams = eval_streams(ids)
    part = streams.limited(100)
    assert len(part.spans) == len(streams.spans) == 16
    for (s, last, warm), (ps, plast, pwarm) in zip(streams.spans, part.spans, strict=True):
        assert (ps, pwarm) == (s, warm) and plast == min(last, s + warm + 100)
    model = CharLM(ModelConfig(vocab_size=20, layers=1, hidden=16, dropout=0.0))
    whole, within = read_bits(model, streams, torch.device("cpu"), within=100)
    assert whole == pytest.approx(total_bits(model, streams, torch.device("cpu")), rel=1e-6)
    assert within == pytest.approx(total_bits(model, part, torch.device("cpu")), rel=1e-6)
    assert total_bits(model, part, torch.device("cpu")) == total_bits(model, part, torch.device("cpu"))
    assert 0 < time_step(model, streams, torch.device("cpu"), None) < 0.1  # the real timer, seconds per step


def test_the_cli_says_what_evaluations_read_and_refuses_a_bad_count(
    long_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    flags = tiny_flags(max_steps=20, eval_every=10, max_time=0)
    done = run_cli(
        capsys, monkeypatch, "train", long_corpus, "--out", tmp_path / "m.pt", "--eval-chars", "1,600", *flags
    )
    assert done.code == 0, done.stderr
    said = " ".join(done.stdout.split())  # the console wraps long lines
    assert "evaluations read 1,600 of the 11,879 validation characters (16 evenly spaced spans; as set" in said
    assert "done: step 20, val " in said and " bpc over all 11,879 validation characters" in said
    bad = run_cli(capsys, monkeypatch, "train", long_corpus, "--out", tmp_path / "n.pt", "--eval-chars", "most")
    assert_clear_error(bad, "--eval-chars must be auto, all or a positive count")
