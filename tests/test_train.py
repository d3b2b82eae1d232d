import math
from pathlib import Path

import pytest
import torch

from chargen.checkpoint import load_checkpoint
from chargen.config import TrainConfig
from chargen.errors import TrainingDiverged
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


def test_interrupted_then_resumed_run_equals_a_straight_run(corpus_file: Path, tmp_path: Path) -> None:
    straight = Recorder()
    start(corpus_file, tmp_path / "a.pt", straight).run()

    first = Recorder(stop_at=17)  # mid-epoch, between evaluations
    with pytest.raises(Interrupted, match="interrupted at step 17"):
        start(corpus_file, tmp_path / "b.pt", first).run()
    saved = load_checkpoint(tmp_path / "b.last.pt")["resume"]
    assert saved["step"] == 17 and (saved["epoch"], saved["offset"]) != (0, 0)

    second = Recorder()
    resumed = start(corpus_file, tmp_path / "b.pt", second, resume=True)
    assert resumed.progress.step == 17 and resumed.progress.cursor.offset == saved["offset"]
    resumed.run()

    assert first.losses + second.losses == straight.losses
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


def test_time_budget_drives_the_schedule(corpus_file: Path, tmp_path: Path) -> None:
    trainer = start(corpus_file, tmp_path / "m.pt", Recorder(), max_steps=0, max_time=60)
    trainer.progress.elapsed = 45
    assert trainer.fraction_done() == pytest.approx(0.75)


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
