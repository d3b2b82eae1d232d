"""The training history: carried by every checkpoint, continued by a resume, read from a
checkpoint or a metrics log, and drawn as a sparkline."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from chargen.analysis.history import read_history, sparkline
from chargen.checkpoint import load_checkpoint, save_checkpoint
from chargen.errors import ChargenError
from chargen.training.run import TrainRequest, prepare
from tests.helpers import chargen_command, tiny_model, tiny_train


def _train(corpus: Path, out: Path, steps: int, resume: bool = False) -> None:
    train = tiny_train(batch_size=4, seq_len=16, warmup_steps=1, max_steps=steps, eval_every=2)
    prepare(TrainRequest(corpus, out, model=tiny_model(hidden=8, dropout=0.1), train=train, resume=resume)).run()


def test_a_checkpoint_carries_the_same_records_as_the_metrics_log(tiny_checkpoint: Path) -> None:
    log = tiny_checkpoint.with_name("tiny.metrics.jsonl")
    logged = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    last = read_history(tiny_checkpoint.with_name("tiny.last.pt"))
    assert last.records == logged
    assert [r["step"] for r in logged] == [30, 60]
    assert read_history(log).records == logged


def test_the_best_checkpoint_holds_the_history_up_to_its_own_evaluation(tiny_checkpoint: Path) -> None:
    best = read_history(tiny_checkpoint)
    step = load_checkpoint(tiny_checkpoint)["metrics"]["step"]
    assert best.records[-1]["step"] == step
    assert best.name == "tiny"


def test_a_resumed_run_continues_its_history(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.pt"
    _train(corpus_file, out, 4)
    _train(corpus_file, out, 8, resume=True)
    assert [r["step"] for r in read_history(tmp_path / "r.last.pt").records] == [2, 4, 6, 8]


def test_a_checkpoint_from_before_the_history_still_loads(tiny_checkpoint: Path, tmp_path: Path) -> None:
    payload = load_checkpoint(tiny_checkpoint)
    del payload["history"], payload["format"], payload["version"]
    old = tmp_path / "old.pt"
    save_checkpoint(old, payload)
    assert "history" not in load_checkpoint(old)
    with pytest.raises(ChargenError, match="older chargen"):
        read_history(old)


def test_a_damaged_history_is_refused_naming_it(tiny_checkpoint: Path, tmp_path: Path) -> None:
    payload = load_checkpoint(tiny_checkpoint)
    payload["history"] = [{"step": torch.zeros(2)}]
    del payload["format"], payload["version"]
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, payload)
    with pytest.raises(ChargenError, match="training history is damaged"):
        load_checkpoint(bad)


def test_a_line_that_is_not_json_is_named(tmp_path: Path) -> None:
    log = tmp_path / "x.metrics.jsonl"
    log.write_text('{"step": 1, "val_bpc": 2.0}\nnot json\n', encoding="utf-8")
    with pytest.raises(ChargenError, match="line 2"):
        read_history(log)


def test_a_sparkline_runs_from_the_lowest_to_the_highest_block() -> None:
    assert sparkline([3.0, 2.0, 1.0]) == "█▅▁"
    assert sparkline([1.0, float("nan"), 1.0]) == "▁ ▁"


def test_a_long_sparkline_is_resampled_keeping_both_ends() -> None:
    line = sparkline([float(i) for i in range(100)], width=10)
    assert len(line) == 10 and line[0] == "▁" and line[-1] == "█"


def test_info_shows_the_validation_curve(tiny_checkpoint: Path) -> None:
    result = subprocess.run([*chargen_command(), "info", str(tiny_checkpoint)], capture_output=True, text=True)
    row = next(line for line in result.stdout.splitlines() if "val bpc curve" in line)
    assert "(2 evaluations)" in row and any(block in row for block in "▁█")
