import math
import time
from pathlib import Path

import pytest
import torch

from chargen.checkpoint import load_checkpoint
from chargen.config import TrainConfig
from chargen.errors import TrainingDiverged
from chargen.training.events import StepEvent
from chargen.training.trainer import Interrupted, lr_at
from tests.helpers import RECORDED_TRAIN, Recorder, start


def test_loss_falls_and_best_and_last_checkpoints_are_written(corpus_file: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    start(corpus_file, tmp_path / "m.pt", recorder, max_steps=80).run()
    assert sum(recorder.losses[-10:]) / 10 < sum(recorder.losses[:10]) / 10 - 0.5
    best, last = load_checkpoint(tmp_path / "m.pt"), load_checkpoint(tmp_path / "m.last.pt")
    assert "resume" not in best and last["resume"]["step"] == 80
    assert best["metrics"]["best_val_bpc"] == min(e.val_bpc for e in recorder.evals)
    assert len((tmp_path / "m.metrics.jsonl").read_text().splitlines()) == len(recorder.evals) == 8


@pytest.mark.parametrize(
    "budget", [{"max_steps": 40}, {"max_steps": 0, "max_epochs": 1.2}], ids=["step budget", "epoch budget"]
)
def test_interrupted_then_resumed_run_equals_a_straight_run(
    corpus_file: Path, tmp_path: Path, budget: dict[str, float]
) -> None:
    """Bit for bit, with a budget of steps or of epochs (whose schedule follows the data position;
    the epoch budget's run also crosses an epoch boundary after the resume)."""
    straight = Recorder()
    start(corpus_file, tmp_path / "a.pt", straight, **budget).run()

    first = Recorder(stop_at=17)  # mid-epoch, between evaluations
    with pytest.raises(Interrupted, match="interrupted at step 17"):
        start(corpus_file, tmp_path / "b.pt", first, **budget).run()
    saved = load_checkpoint(tmp_path / "b.last.pt")["resume"]
    assert saved["step"] == 17 and (saved["epoch"], saved["offset"]) != (0, 0)

    second = Recorder()
    resumed = start(corpus_file, tmp_path / "b.pt", second, resume=True, **budget)
    assert resumed.progress.step == 17 and resumed.progress.cursor.offset == saved["offset"]
    resumed.run()

    assert first.losses + second.losses == straight.losses
    if "max_epochs" in budget:
        assert resumed.epoch_progress() >= 1.2 and resumed.progress.cursor.epoch >= 1
    a, b = load_checkpoint(tmp_path / "a.last.pt")["model"], load_checkpoint(tmp_path / "b.last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_shape(corpus_file: Path, tmp_path: Path) -> None:
    start(corpus_file, tmp_path / "m.pt", Recorder(), max_steps=10).run()
    with pytest.raises(Exception, match="--batch-size 8 differs from the resumed run's 4"):
        start(corpus_file, tmp_path / "m.pt", Recorder(), resume=True, batch_size=8)


def test_resume_refuses_a_changed_corpus(corpus_file: Path, tmp_path: Path) -> None:
    start(corpus_file, tmp_path / "m.pt", Recorder(), max_steps=10).run()
    changed = tmp_path / "changed.txt"
    changed.write_text(corpus_file.read_text() + "more", encoding="utf-8")
    with pytest.raises(Exception, match="corpus has changed"):
        start(changed, tmp_path / "m.pt", Recorder(), resume=True)


def test_schedule_warms_up_then_decays_to_the_floor() -> None:
    config = TrainConfig(lr=1e-3, warmup_steps=10, min_lr_frac=0.1, max_steps=100, max_time=0)
    assert lr_at(config, 0, 0.0) == pytest.approx(1e-4)
    assert lr_at(config, 9, 0.09) == pytest.approx(1e-3, rel=0.02)
    assert lr_at(config, 50, 0.5) == pytest.approx(0.55e-3)
    assert lr_at(config, 100, 1.0) == pytest.approx(1e-4)


def test_a_time_budget_ends_the_run_and_drives_the_schedule(corpus_file: Path, tmp_path: Path) -> None:
    """A real 1.5 s budget, no other: the run stops by itself once it is spent, its clock is the
    wall clock, and the learning rate has decayed to its floor by the last step."""

    class Rates(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.steps: list[StepEvent] = []

        def on_step(self, event: StepEvent) -> None:
            super().on_step(event)
            self.steps.append(event)

    recorder = Rates()
    trainer = start(corpus_file, tmp_path / "m.pt", recorder, max_steps=0, max_time=1.5, eval_every=10_000)
    began = time.perf_counter()
    progress = trainer.run()
    wall = time.perf_counter() - began
    assert 1.5 <= progress.elapsed <= wall + 0.05 and wall < 1.5 + 30  # generous for a busy machine
    assert trainer.fraction_done() >= 1.0 and len(recorder.evals) == 1  # the closing evaluation only
    fractions = [event.fraction_done for event in recorder.steps]
    assert fractions == sorted(fractions) and fractions[0] < 0.2 < 0.8 < fractions[-1]
    config = trainer.config
    floor = config.lr * config.min_lr_frac
    assert recorder.steps[-1].lr == pytest.approx(lr_at(config, progress.step - 1, fractions[-2]), rel=1e-6)
    assert recorder.steps[-1].lr < floor + 0.1 * (config.lr - floor)


def test_early_stopping_after_patience_runs_out(corpus_file: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    # A learning rate this large stops improving quickly; patience 1 ends the run at the first bad eval.
    start(corpus_file, tmp_path / "m.pt", recorder, lr=0.5, warmup_steps=0, max_steps=400, patience=1).run()
    assert any("stopping early" in m for m in recorder.messages)
    assert recorder.evals[-1].step < 400 and not recorder.evals[-1].improved


def test_nonfinite_losses_are_skipped_then_stop_the_run(corpus_file: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    trainer = start(corpus_file, tmp_path / "m.pt", recorder)
    trainer.run()  # a good checkpoint first
    before = (tmp_path / "m.last.pt").read_bytes()
    with torch.no_grad():
        trainer.model.head.bias.fill_(math.nan)
    trainer.config = TrainConfig(**{**RECORDED_TRAIN, "max_steps": 100})
    with pytest.raises(TrainingDiverged, match=r"not finite 5 steps in a row.*lower --lr"):
        trainer.run()
    assert sum("loss not finite" in m for m in recorder.messages) == 4
    assert (tmp_path / "m.last.pt").read_bytes() == before


def test_small_corpus_lowers_the_batch_visibly(tmp_path: Path) -> None:
    corpus = tmp_path / "small.txt"
    corpus.write_text("abcdefghij" * 20, encoding="utf-8")
    recorder = Recorder()
    trainer = start(corpus, tmp_path / "m.pt", recorder, batch_size=64)
    assert trainer.config.batch_size == (180 - 1) // 16
    assert "batch size lowered from 64" in recorder.messages[0]


def test_too_small_corpus_gives_the_minimum(tmp_path: Path) -> None:
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("hello", encoding="utf-8")
    with pytest.raises(Exception, match=r"too small: 4 training characters; chargen needs at least \d+ characters"):
        start(corpus, tmp_path / "m.pt", Recorder())


def test_without_an_output_path_the_best_weights_stay_in_memory(corpus_file: Path, tmp_path: Path) -> None:
    from chargen.training.trainer import Trainer

    prepared = start(corpus_file, tmp_path / "unused.pt", Recorder(), max_steps=20)
    recorder = Recorder()
    in_memory = Trainer(
        prepared.model, prepared.tokenizer, prepared.data, prepared.config, None, prepared.device, None, recorder
    )
    in_memory.run()
    best = min(recorder.evals, key=lambda e: e.val_bpc)
    assert in_memory.best_weights is not None and best.improved
    assert list(tmp_path.iterdir()) == []
    in_memory.model.load_state_dict(in_memory.best_weights)
    assert in_memory.validation_bpc() == pytest.approx(best.val_bpc, abs=1e-5)


def test_a_run_on_the_token_cache_equals_the_run_that_built_it(corpus_file: Path, tmp_path: Path) -> None:
    from chargen.data import token_cache
    from chargen.data.corpus import read_corpus

    building = Recorder()
    first = start(corpus_file, tmp_path / "a.pt", building)
    assert len(token_cache.entries(token_cache.cache_dir())) == 1
    first.run()
    stamp = [p.stat().st_mtime_ns for p in token_cache.entries(token_cache.cache_dir())]
    reusing = Recorder()
    second = start(corpus_file, tmp_path / "b.pt", reusing)
    assert [p.stat().st_mtime_ns for p in token_cache.entries(token_cache.cache_dir())] == stamp  # not rebuilt
    text = read_corpus(corpus_file)
    in_memory = second.tokenizer.encode(text)
    assert torch.equal(torch.cat([second.data.train_ids, second.data.val_ids]), in_memory)
    second.run()
    assert reusing.losses == building.losses and len(building.losses) == 40
    assert [e.val_bpc for e in reusing.evals] == [e.val_bpc for e in building.evals]
