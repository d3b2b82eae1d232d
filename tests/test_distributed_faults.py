"""Faults under torchrun: a rank that fails alone or is killed ends every process within a bounded
time, with one `Error:` line for the whole group and a non-zero exit."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.ranks import (
    FINE_TUNE,
    TINY,
    chargen,
    error_lines,
    free_port,
    load,
    rank_pid,
    reap_launchers,  # noqa: F401 (autouse: no launcher outlives its test)
    run,
    start,
    torchrun,
    wait_for,
    write_corpus,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "words.txt")


def _node(node_rank: int, port: int, args: str) -> list[str]:
    """One of two torchrun launchers on this machine, each a "node" with one rank. The static
    rendezvous keeps --node-rank, so node 1 holds rank 1 (c10d would rank them in join order)."""
    static = ("--rdzv-backend=static", "--master-addr=127.0.0.1", f"--master-port={port}")
    return torchrun(args, "--nnodes=2", f"--node-rank={node_rank}", *static, procs=1)


def test_a_corpus_that_fails_on_one_node_only_is_one_error_line_naming_its_rank(tmp_path: Path) -> None:
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
    write_corpus(nodes[0] / "corpus.txt")
    (nodes[1] / "corpus.txt").write_bytes("café au lait ".encode("latin-1") * 400)  # this copy is broken
    port, out = free_port(), tmp_path / "m.pt"
    args = f"corpus.txt {TINY} --batch-size 8 --max-steps 50 --out {out}"
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    launchers = [start(_node(i, port, args), log, cwd=node) for i, (node, log) in enumerate(zip(nodes, logs))]
    codes = [launcher.wait(timeout=60) for launcher in launchers]
    assert all(code != 0 for code in codes)
    errors = error_lines(logs[0].read_text()) + error_lines(logs[1].read_text())
    assert len(errors) == 1, errors
    assert errors[0].startswith("Error: rank 1: corpus.txt is not valid UTF-8"), errors
    assert "[rank" not in logs[0].read_text() + logs[1].read_text()  # no rank's traceback
    assert not out.with_name("m.last.pt").exists()


def test_a_killed_rank_without_restarts_ends_every_process_with_one_line(corpus: Path, tmp_path: Path) -> None:
    out, log = tmp_path / "m.pt", tmp_path / "log.txt"
    launcher = start(torchrun(f"{corpus} {TINY} --batch-size 8 --eval-every 5 --max-steps 100000 --out {out}"), log)
    wait_for(out.with_name("m.last.pt"), launcher)
    survivor = rank_pid(launcher, 0)
    os.kill(rank_pid(launcher, 1), signal.SIGKILL)
    assert launcher.wait(timeout=30) != 0
    with pytest.raises(ProcessLookupError):
        os.kill(survivor, 0)  # no rank left behind
    errors = error_lines(log.read_text())
    assert len(errors) == 1 and errors[0].startswith("Error: rank 0 lost its peers"), errors
    assert "--resume" in errors[0]


def test_a_rank_that_stops_answering_fails_the_group_after_dist_timeout(corpus: Path, tmp_path: Path) -> None:
    out, log = tmp_path / "m.pt", tmp_path / "log.txt"
    args = f"{corpus} {TINY} --batch-size 8 --eval-every 5 --max-steps 100000 --dist-timeout 3s --out {out}"
    launcher = start(torchrun(args), log)
    wait_for(out.with_name("m.last.pt"), launcher)
    frozen = rank_pid(launcher, 1)
    os.kill(frozen, signal.SIGSTOP)
    started = time.monotonic()
    try:
        while not error_lines(log.read_text()):  # rank 0 gives up on its own, after the timeout
            assert time.monotonic() - started < 30, "rank 0 still waits for the frozen rank"
            time.sleep(0.1)
    finally:
        os.kill(frozen, signal.SIGCONT)  # lets it take the launcher's SIGTERM
    assert time.monotonic() - started >= 3
    assert launcher.wait(timeout=30) != 0
    errors = error_lines(log.read_text())
    assert len(errors) == 1 and errors[0].startswith("Error: rank 0 lost its peers"), errors


def test_dist_timeout_must_be_a_positive_duration(corpus: Path, tmp_path: Path) -> None:
    result = run(chargen(f"{corpus} {TINY} --max-steps 1 --dist-timeout 0 --out {tmp_path / 'm.pt'}"))
    assert result.returncode != 0
    assert error_lines(result.stderr) == ["Error: --dist-timeout must be more than 0 (like 90s or 5m), not '0'"]


@pytest.mark.parametrize("way", ["new", "fine-tune"])
def test_a_killed_rank_with_a_restart_left_resumes_from_its_checkpoint_and_finishes(
    corpus: Path, tmp_path: Path, tiny_checkpoint: Path, way: str
) -> None:
    """A new run, and a fine-tune of the Chaucer model (the restart resumes it: no --init-from crash)."""
    out, log = tmp_path / "m.pt", tmp_path / "log.txt"
    start_options = f"{TINY} --batch-size 8" if way == "new" else f"--init-from {tiny_checkpoint} {FINE_TUNE}"
    args = f"{corpus} {start_options} --eval-every 10 --max-steps 80 --out {out}"
    launcher = start(torchrun(args, "--max-restarts=1"), log)
    wait_for(out.with_name("m.last.pt"), launcher)  # a checkpoint to come back to, long before step 80
    victim = rank_pid(launcher, 1)
    os.kill(victim, signal.SIGSTOP)  # the group cannot pass its next step now; then the kill
    os.kill(victim, signal.SIGKILL)
    assert launcher.wait(timeout=90) == 0, log.read_text()
    said = log.read_text()
    resumed_at = int(said.split("resuming at step ")[1].split()[0])  # the restarted group said so
    assert 10 <= resumed_at < 80 and resumed_at % 10 == 0
    assert said.count("done: step 80") == 1
    final = load(out.with_name("m.last.pt"))
    assert final["metrics"]["step"] == final["resume"]["step"] == 80
    if way == "fine-tune":  # the grown vocabulary, kept through the restart
        assert final["tokenizer"] == load(out)["tokenizer"] != load(tiny_checkpoint)["tokenizer"]
