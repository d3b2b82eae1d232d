"""Real ranks: torchrun (python -m torch.distributed.run) with gloo on 127.0.0.1, tiny models,
one thread per rank. Faults (failed and killed ranks, restarts) are in test_distributed_faults."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_flags
from tests.ranks import (
    TINY,
    chargen,
    error_lines,
    free_port,
    load,
    rank_pids,
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


def test_two_ranks_train_the_weights_of_one_process_with_the_same_global_batch(corpus: Path, tmp_path: Path) -> None:
    args = f"{corpus} {TINY} --batch-size 8 --max-steps 6 --eval-every 3"
    ranks = run(torchrun(f"{args} --out {tmp_path / 'ranks.pt'}"))
    assert ranks.returncode == 0, ranks.stderr
    one = run(chargen(f"{args} --out {tmp_path / 'one.pt'} --quiet"))
    assert one.returncode == 0, one.stderr
    a, b = load(tmp_path / "ranks.last.pt"), load(tmp_path / "one.last.pt")
    assert a["metrics"]["step"] == b["metrics"]["step"] == 6
    for name, weight in b["model"].items():
        torch.testing.assert_close(a["model"][name], weight, rtol=0, atol=1e-5)
    # The carried state of all 8 streams, gathered from both ranks: equal only if each rank read
    # exactly its block of rows (swapped or shared blocks differ here by far more than 1e-5).
    for ha, hb in zip(a["resume"]["hidden"], b["resume"]["hidden"], strict=True):
        assert ha.shape[1] == 8
        torch.testing.assert_close(ha, hb, rtol=0, atol=1e-5)
    assert ranks.stdout.count("done: step 6") == 1  # rank 0 alone speaks


def test_batch_that_does_not_divide_among_ranks_is_one_error_line(corpus: Path, tmp_path: Path) -> None:
    ranks = run(torchrun(f"{corpus} {TINY} --batch-size 7 --max-steps 2 --out {tmp_path / 'm.pt'}"))
    assert ranks.returncode != 0
    assert error_lines(ranks.stderr) == ["Error: --batch-size 7 does not divide among 2 ranks; use a multiple of 2"]


def test_ctrl_c_to_the_launcher_saves_one_checkpoint_that_resumes_under_torchrun_at_its_step(
    corpus: Path, tmp_path: Path
) -> None:
    out, log = tmp_path / "m.pt", tmp_path / "log.txt"
    args = f"{corpus} {TINY} --batch-size 8 --eval-every 5 --out {out}"
    launcher = start(torchrun(f"{args} --max-steps 100000"), log)
    wait_for(out.with_name("m.last.pt"), launcher)
    launcher.send_signal(signal.SIGINT)
    launcher.wait(timeout=60)
    errors = error_lines(log.read_text())
    assert len(errors) == 1 and "interrupted at step" in errors[0] and "--resume" in errors[0], errors
    step = int(errors[0].split("interrupted at step ")[1].split(";")[0])
    assert load(out.with_name("m.last.pt"))["metrics"]["step"] == step
    resumed = run(torchrun(f"{args} --resume --max-steps {step + 3}"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"done: step {step + 3}" in resumed.stdout


def test_two_nodes_on_one_machine_train_and_write_one_checkpoint(corpus: Path, tmp_path: Path) -> None:
    """Two torchrun launchers meeting at a c10d rendezvous, one rank each, as two machines would."""
    out, port = tmp_path / "m.pt", free_port()
    args = f"{corpus} {TINY} --batch-size 8 --max-steps 6 --eval-every 3 --out {out}"
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    launchers = [
        start(torchrun(args, "--nnodes=2", f"--node-rank={node}", procs=1, port=port), log)
        for node, log in enumerate(logs)
    ]
    assert [launcher.wait(timeout=90) for launcher in launchers] == [0, 0], logs[0].read_text()
    said = logs[0].read_text() + logs[1].read_text()
    assert said.count("done: step 6") == 1  # one voice for both nodes
    assert sorted(p.name for p in tmp_path.glob("m*")) == ["m.last.pt", "m.metrics.jsonl", "m.pt"]  # no temp files
    assert len((tmp_path / "m.metrics.jsonl").read_text().splitlines()) == 2  # evaluations at steps 3 and 6, once
    one = run(chargen(f"{corpus} {TINY} --batch-size 8 --max-steps 6 --eval-every 3 --out {tmp_path / 'one.pt'}"))
    assert one.returncode == 0, one.stderr
    nodes, single = load(tmp_path / "m.last.pt"), load(tmp_path / "one.last.pt")
    assert nodes["metrics"]["step"] == 6
    for name, weight in single["model"].items():
        torch.testing.assert_close(nodes["model"][name], weight, rtol=0, atol=1e-5)


def test_procs_launches_ranks_itself_and_ctrl_c_stops_them_with_one_line(corpus: Path, tmp_path: Path) -> None:
    out, log = tmp_path / "m.pt", tmp_path / "log.txt"
    ranks = start(
        chargen(f"{corpus} {TINY} --batch-size 8 --eval-every 5 --max-steps 100000 --out {out} --procs 2"), log
    )
    wait_for(out.with_name("m.last.pt"), ranks)
    assert len(rank_pids(ranks)) == 2  # the launcher's own ranks
    os.killpg(ranks.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the launcher and both ranks
    assert ranks.wait(timeout=60) == 130
    said = log.read_text()
    errors = error_lines(said)
    assert len(errors) == 1 and "interrupted at step" in errors[0], said
    assert "Traceback" not in said and "ChildFailedError" not in said
    step = int(errors[0].split("interrupted at step ")[1].split(";")[0])
    assert load(out.with_name("m.last.pt"))["metrics"]["step"] == step


def test_procs_must_be_positive(corpus: Path, tmp_path: Path) -> None:
    result = run(chargen(f"{corpus} {TINY} --max-steps 1 --procs 0 --out {tmp_path / 'm.pt'}"))
    assert result.returncode != 0
    assert error_lines(result.stderr) == ["Error: --procs must be 1 or more, not 0"]


# Two layers with the default dropout and weight drop: masks on the embedding, between the layers,
# on the output and on the recurrent weights.
DROPPING = " ".join(tiny_flags(layers=2, embed=16, seed=3, precision="fp32"))


def test_with_dropout_two_ranks_draw_the_masks_of_one_process(corpus: Path, tmp_path: Path) -> None:
    args = f"{corpus} {DROPPING} --max-steps 30 --eval-every 10"
    one = run(chargen(f"{args} --out {tmp_path / 'one.pt'}"))
    two = run(torchrun(f"{args} --out {tmp_path / 'two.pt'}"))
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    single, ranks = load(tmp_path / "one.last.pt")["model"], load(tmp_path / "two.last.pt")["model"]
    for name, weight in single.items():
        torch.testing.assert_close(ranks[name], weight, rtol=0, atol=1e-5)


def test_with_dropout_a_run_interrupted_under_torchrun_resumes_to_the_straight_runs_weights(
    corpus: Path, tmp_path: Path
) -> None:
    out, log = tmp_path / "m.pt", tmp_path / "log.txt"
    args = f"{corpus} {DROPPING} --eval-every 5 --max-steps 200"
    straight = run(torchrun(f"{args} --out {tmp_path / 's.pt'}"))
    assert straight.returncode == 0, straight.stderr
    launcher = start(torchrun(f"{args} --out {out}"), log)
    wait_for(out.with_name("m.last.pt"), launcher)
    launcher.send_signal(signal.SIGINT)
    launcher.wait(timeout=60)
    errors = error_lines(log.read_text())
    assert len(errors) == 1 and "interrupted at step" in errors[0], log.read_text()
    assert int(errors[0].split("interrupted at step ")[1].split(";")[0]) < 200
    resumed = run(torchrun(f"{args} --resume --out {out}"))
    assert resumed.returncode == 0, resumed.stderr
    a, b = load(tmp_path / "s.last.pt")["model"], load(out.with_name("m.last.pt"))["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_a_run_resumes_on_another_world_size_as_it_would_on_the_same_one(corpus: Path, tmp_path: Path) -> None:
    """4 steps on 2 ranks then 4 more in one process, and 4 in one process then 4 more on 2
    ranks, both end with the weights of 4 + 4 steps in one process: the whole batch's hidden
    state and the streams are re-divided among the ranks a resume finds."""
    args = f"{corpus} {TINY} --batch-size 8 --eval-every 2 --quiet"

    def train(launch: Callable[[str], list[str]], folder: Path, steps: int, resume: str = "") -> None:
        done = run(launch(f"{args} --max-steps {steps} {resume} --out {folder / 'm.pt'}"))
        assert done.returncode == 0, done.stderr
        assert load(folder / "m.last.pt")["metrics"]["step"] == steps

    folders = {name: tmp_path / name for name in ("one", "ranks_then_one", "one_then_ranks")}
    train(chargen, folders["one"], 4)
    shutil.copytree(folders["one"], folders["one_then_ranks"])
    train(chargen, folders["one"], 8, "--resume")
    train(torchrun, folders["one_then_ranks"], 8, "--resume")
    train(torchrun, folders["ranks_then_one"], 4)
    train(chargen, folders["ranks_then_one"], 8, "--resume")
    reference = load(folders["one"] / "m.last.pt")
    for name in ("ranks_then_one", "one_then_ranks"):
        resumed = load(folders[name] / "m.last.pt")
        for weight, value in reference["model"].items():
            torch.testing.assert_close(resumed["model"][weight], value, rtol=0, atol=1e-5)
        for mine, theirs in zip(resumed["resume"]["hidden"], reference["resume"]["hidden"], strict=True):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("budget", "said"),
    [
        ("--max-time 3s --max-steps 0", "done: step"),
        ("--patience 1 --lr 0.5 --warmup 0 --max-steps 2000", "stopping early: validation has not improved"),
    ],
    ids=["time budget", "patience"],
)
def test_a_time_budget_or_patience_stops_every_rank_together(
    corpus: Path, tmp_path: Path, budget: str, said: str
) -> None:
    """Ranks that did not stop together would leave one waiting for the other's gradients until
    --dist-timeout: the group ends promptly and cleanly, rank 0 saying so once."""
    out = tmp_path / "m.pt"
    ranks = run(torchrun(f"{corpus} {TINY} --batch-size 8 --eval-every 4 {budget} --dist-timeout 30s --out {out}"))
    assert ranks.returncode == 0, ranks.stderr
    assert ranks.stdout.count(said) == 1 and "Traceback" not in ranks.stderr
    metrics = load(out.with_name("m.last.pt"))["metrics"]
    if "max-time" in budget:
        assert 2.0 < metrics["elapsed"] < 30  # it ends early by as long as its last evaluation took
    else:
        assert 0 < metrics["step"] < 2000
