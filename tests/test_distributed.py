"""Real ranks: torchrun (python -m torch.distributed.run) with gloo on 127.0.0.1, tiny models,
one thread per rank. Faults (failed and killed ranks, restarts) are in test_distributed_faults."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
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


# Four steps of the tiny model, evaluated (and saved) every other step: what the equality tests
# compare and the world-size resume starts from.
FOUR = f"{TINY} --batch-size 8 --max-steps 4 --eval-every 2"


@dataclass
class FourSteps:
    one: Path  # a folder holding m.pt and m.last.pt of one process
    ranks: Path  # the same from two ranks under torchrun
    said: str  # what the two ranks printed


@pytest.fixture(scope="module")
def four_steps(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> FourSteps:
    """Both runs once for the module; tests that go on from them copy the folders first."""
    folder = tmp_path_factory.mktemp("four")
    one = run(chargen(f"{corpus} {FOUR} --out {folder / 'one' / 'm.pt'} --quiet"))
    assert one.returncode == 0, one.stderr
    ranks = run(torchrun(f"{corpus} {FOUR} --out {folder / 'ranks' / 'm.pt'}"))
    assert ranks.returncode == 0, ranks.stderr
    for name in ("one", "ranks"):
        assert load(folder / name / "m.last.pt")["metrics"]["step"] == 4
    return FourSteps(folder / "one", folder / "ranks", ranks.stdout)


def test_two_ranks_train_the_weights_of_one_process_with_the_same_global_batch(four_steps: FourSteps) -> None:
    a, b = load(four_steps.ranks / "m.last.pt"), load(four_steps.one / "m.last.pt")
    for name, weight in b["model"].items():
        torch.testing.assert_close(a["model"][name], weight, rtol=0, atol=1e-5)
    # The carried state of all 8 streams, gathered from both ranks: equal only if each rank read
    # exactly its block of rows (swapped or shared blocks differ here by far more than 1e-5).
    for ha, hb in zip(a["resume"]["hidden"], b["resume"]["hidden"], strict=True):
        assert ha.shape[1] == 8
        torch.testing.assert_close(ha, hb, rtol=0, atol=1e-5)
    assert four_steps.said.count("done: step 4") == 1  # rank 0 alone speaks


def test_batch_that_does_not_divide_among_ranks_is_one_error_line(corpus: Path, tmp_path: Path) -> None:
    ranks = run(torchrun(f"{corpus} {TINY} --batch-size 7 --max-steps 2 --out {tmp_path / 'm.pt'}"))
    assert ranks.returncode != 0
    assert error_lines(ranks.stderr) == ["Error: --batch-size 7 does not divide among 2 ranks; use a multiple of 2"]


def test_two_nodes_on_one_machine_train_and_write_one_checkpoint(
    corpus: Path, tmp_path: Path, four_steps: FourSteps
) -> None:
    """Two torchrun launchers meeting at a c10d rendezvous, one rank each, as two machines would."""
    out, port = tmp_path / "m.pt", free_port()
    args = f"{corpus} {FOUR} --out {out}"
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    launchers = [
        start(torchrun(args, "--nnodes=2", f"--node-rank={node}", procs=1, port=port), log)
        for node, log in enumerate(logs)
    ]
    assert [launcher.wait(timeout=90) for launcher in launchers] == [0, 0], logs[0].read_text()
    said = logs[0].read_text() + logs[1].read_text()
    assert said.count("done: step 4") == 1  # one voice for both nodes
    assert sorted(p.name for p in tmp_path.glob("m*")) == ["m.last.pt", "m.metrics.jsonl", "m.pt"]  # no temp files
    assert len((tmp_path / "m.metrics.jsonl").read_text().splitlines()) == 2  # evaluations at steps 2 and 4, once
    nodes, single = load(tmp_path / "m.last.pt"), load(four_steps.one / "m.last.pt")
    assert nodes["metrics"]["step"] == 4
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
# on the output and on the recurrent weights. 100 steps: time to Ctrl-C a run after its first save.
DROPPING = " ".join(tiny_flags(layers=2, embed=16, seed=3, precision="fp32")) + " --eval-every 5 --max-steps 100"


@pytest.fixture(scope="module")
def dropping_ranks(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The straight run on two ranks, once: its weights are what one process and an interrupted
    and resumed run must reach."""
    out = tmp_path_factory.mktemp("dropping") / "s.pt"
    straight = run(torchrun(f"{corpus} {DROPPING} --out {out}"))
    assert straight.returncode == 0, straight.stderr
    return out.with_name("s.last.pt")


def test_with_dropout_two_ranks_draw_the_masks_of_one_process(
    corpus: Path, tmp_path: Path, dropping_ranks: Path
) -> None:
    one = run(chargen(f"{corpus} {DROPPING} --out {tmp_path / 'one.pt'}"))
    assert one.returncode == 0, one.stderr
    single, ranks = load(tmp_path / "one.last.pt")["model"], load(dropping_ranks)["model"]
    for name, weight in single.items():
        torch.testing.assert_close(ranks[name], weight, rtol=0, atol=1e-5)


def test_ctrl_c_to_the_launcher_saves_one_checkpoint_that_resumes_at_its_step_to_the_straight_runs_weights(
    corpus: Path, tmp_path: Path, dropping_ranks: Path
) -> None:
    """With dropout: the resumed ranks draw the masks the straight run drew after that step."""
    out, log = tmp_path / "m.pt", tmp_path / "log.txt"
    args = f"{corpus} {DROPPING} --out {out}"
    launcher = start(torchrun(args), log)
    wait_for(out.with_name("m.last.pt"), launcher)
    launcher.send_signal(signal.SIGINT)
    launcher.wait(timeout=60)
    errors = error_lines(log.read_text())
    assert len(errors) == 1 and "interrupted at step" in errors[0] and "--resume" in errors[0], log.read_text()
    step = int(errors[0].split("interrupted at step ")[1].split(";")[0])
    assert step < 100
    assert load(out.with_name("m.last.pt"))["metrics"]["step"] == step
    resumed = run(torchrun(f"{args} --resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {step}" in resumed.stdout and resumed.stdout.count("done: step 100") == 1
    a, b = load(dropping_ranks)["model"], load(out.with_name("m.last.pt"))["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_a_run_resumes_on_another_world_size_as_it_would_on_the_same_one(
    corpus: Path, tmp_path: Path, four_steps: FourSteps
) -> None:
    """4 steps on 2 ranks then 4 more in one process, and 4 in one process then 4 more on 2
    ranks, both end with the weights of 4 + 4 steps in one process: the whole batch's hidden
    state and the streams are re-divided among the ranks a resume finds."""
    args = f"{corpus} {TINY} --batch-size 8 --eval-every 2 --quiet --max-steps 8 --resume"

    def resume(launch: Callable[[str], list[str]], start_from: Path, folder: Path) -> None:
        shutil.copytree(start_from, folder)
        done = run(launch(f"{args} --out {folder / 'm.pt'}"))
        assert done.returncode == 0, done.stderr
        assert load(folder / "m.last.pt")["metrics"]["step"] == 8

    folders = {name: tmp_path / name for name in ("one", "ranks_then_one", "one_then_ranks")}
    resume(chargen, four_steps.one, folders["one"])
    resume(torchrun, four_steps.one, folders["one_then_ranks"])
    resume(chargen, four_steps.ranks, folders["ranks_then_one"])
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
