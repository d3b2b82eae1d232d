"""A fine-tune (--init-from) stopped by Ctrl-C continues with --resume, to where it would have ended.
(A torchrun group restarted during a fine-tune: tests/test_distributed_faults.py.)"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from tests import ranks
from tests.helpers import run_cli
from tests.ranks import FINE_TUNE, chargen, load, reap_launchers, run  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def words(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text with letters the Chaucer model has never seen (such as j and q): the vocabulary grows."""
    return ranks.write_corpus(tmp_path_factory.mktemp("corpus") / "words.txt")


def test_ctrl_c_during_a_fine_tune_then_resume_ends_where_a_straight_fine_tune_does(
    tiny_checkpoint: Path,
    words: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The interrupted and resumed runs are real processes (a Ctrl-C, a restart); the straight run
    they must equal bit for bit runs the same command in this process (one thread in both)."""

    def command(out: Path, *extra: str) -> str:
        return f"{words} --init-from {tiny_checkpoint} {FINE_TUNE} --eval-every 5 --max-steps 100 --out {out} " + (
            " ".join(extra)
        )

    out, log = tmp_path / "f.pt", tmp_path / "log.txt"
    process = ranks.start(chargen(command(out)), log)
    ranks.wait_for(out.with_name("f.last.pt"), process)  # fine-tuning has begun (first evaluation at step 5)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C, as a terminal sends it
    assert process.wait(timeout=60) == 130, log.read_text()
    said = log.read_text()
    assert "vocabulary grew by" in said
    step = int(said.split("interrupted at step ")[1].split(";")[0])
    assert step < 100

    resumed = run(chargen(command(out, "--resume")))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {step}" in resumed.stdout and "done: step 100" in resumed.stdout
    straight = run_cli(capsys, monkeypatch, "train", *command(tmp_path / "s.pt").split())
    assert straight.code == 0, straight.stderr
    a, b = load(out.with_name("f.last.pt")), load(tmp_path / "s.last.pt")
    assert a["resume"]["step"] == b["resume"]["step"] == 100
    assert a["tokenizer"] == b["tokenizer"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
