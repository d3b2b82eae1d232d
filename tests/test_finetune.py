"""Fine-tuning (--init-from) that stops and starts again: a Ctrl-C then --resume, and a torchrun group
restarted after a rank died, each continue the fine-tune from its last checkpoint."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from tests.ranks import (
    chargen,
    load,
    rank_pid,
    reap_launchers,  # noqa: F401 (autouse: no launcher outlives its test)
    run,
    start,
    torchrun,
    wait_for,
    write_corpus,
)

# Only what a fine-tune may set: the shape and the tokenizer come from the base checkpoint.
FINE_TUNE = "--grow-vocab --dropout 0 --weight-drop 0 --seq-len 32 --batch-size 8 --seed 3 --threads 1 --precision fp32"


@pytest.fixture(scope="module")
def words(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A text with letters the Chaucer model has never seen (j, k, q, x, z): the vocabulary grows."""
    return write_corpus(tmp_path_factory.mktemp("corpus") / "words.txt")


def test_ctrl_c_during_a_fine_tune_then_resume_ends_where_a_straight_fine_tune_does(
    tiny_checkpoint: Path, words: Path, tmp_path: Path
) -> None:
    def command(out: Path, *extra: str) -> str:
        return f"{words} --init-from {tiny_checkpoint} {FINE_TUNE} --eval-every 5 --max-steps 300 --out {out} " + (
            " ".join(extra)
        )

    out, log = tmp_path / "f.pt", tmp_path / "log.txt"
    process = start(chargen(command(out)), log)
    wait_for(out.with_name("f.last.pt"), process)  # fine-tuning has begun (first evaluation at step 5)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C, as a terminal sends it
    assert process.wait(timeout=60) == 130, log.read_text()
    said = log.read_text()
    assert "vocabulary grew by" in said
    step = int(said.split("interrupted at step ")[1].split(";")[0])
    assert step < 300

    resumed = run(chargen(command(out, "--resume")))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {step}" in resumed.stdout and "done: step 300" in resumed.stdout
    straight = run(chargen(command(tmp_path / "s.pt")))
    assert straight.returncode == 0, straight.stderr
    a, b = load(out.with_name("f.last.pt")), load(tmp_path / "s.last.pt")
    assert a["resume"]["step"] == b["resume"]["step"] == 300
    assert a["tokenizer"] == b["tokenizer"]
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])


def test_a_torchrun_group_restarted_during_a_fine_tune_resumes_it_and_finishes(
    tiny_checkpoint: Path, words: Path, tmp_path: Path
) -> None:
    out, log = tmp_path / "f.pt", tmp_path / "log.txt"
    args = f"{words} --init-from {tiny_checkpoint} {FINE_TUNE} --eval-every 10 --max-steps 150 --out {out}"
    launcher = start(torchrun(args, "--max-restarts=1"), log)
    wait_for(out.with_name("f.last.pt"), launcher)
    victim = rank_pid(launcher, 1)
    os.kill(victim, signal.SIGSTOP)  # the group cannot pass its next step now; then the kill
    os.kill(victim, signal.SIGKILL)
    assert launcher.wait(timeout=90) == 0, log.read_text()
    said = log.read_text()
    resumed_at = int(said.split("resuming at step ")[1].split()[0])  # the restarted group resumed by itself
    assert 10 <= resumed_at < 150
    assert said.count("done: step 150") == 1
    final = load(out.with_name("f.last.pt"))
    assert final["resume"]["step"] == 150
    assert final["tokenizer"] == load(out)["tokenizer"] != load(tiny_checkpoint)["tokenizer"]
