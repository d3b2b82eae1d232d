"""Real ranks: torchrun (python -m torch.distributed.run) with gloo on 127.0.0.1, tiny models,
one thread per rank."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TINY = "--layers 1 --hidden 32 --embed 16 --dropout 0 --seq-len 32 --seed 3 --threads 1 --precision fp32"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(1)
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "a",
        "lazy",
        "dog",
        "and",
        "then",
        "some",
        "more",
        "words",
        "appear",
        "here",
    ]
    path = tmp_path_factory.mktemp("corpus") / "words.txt"
    path.write_text(" ".join(rng.choice(words) for _ in range(6000)), encoding="utf-8")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "PYTHONUNBUFFERED": "1"}


def _torchrun(args: str, *launcher: str, procs: int = 2, port: int | None = None) -> list[str]:
    endpoint = f"127.0.0.1:{port or _free_port()}"
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={procs}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        *launcher,
        "-m",
        "chargen",
        "train",
        *args.split(),
    ]


def _chargen(args: str) -> list[str]:
    return [sys.executable, "-m", "chargen", "train", *args.split()]


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_two_ranks_train_the_weights_of_one_process_with_the_same_global_batch(corpus: Path, tmp_path: Path) -> None:
    args = f"{corpus} {TINY} --batch-size 8 --max-steps 6 --eval-every 3"
    ranks = _run(_torchrun(f"{args} --out {tmp_path / 'ranks.pt'}"))
    assert ranks.returncode == 0, ranks.stderr
    one = _run(_chargen(f"{args} --out {tmp_path / 'one.pt'} --quiet"))
    assert one.returncode == 0, one.stderr
    a, b = _load(tmp_path / "ranks.last.pt"), _load(tmp_path / "one.last.pt")
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
    run = _run(_torchrun(f"{corpus} {TINY} --batch-size 7 --max-steps 2 --out {tmp_path / 'm.pt'}"))
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: --batch-size 7 does not divide among 2 ranks; use a multiple of 2"]


def _start(cmd: list[str], log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, env=_env())


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "the run ended before writing a checkpoint"
        assert time.monotonic() < deadline, f"no {path} after {timeout}s"
        time.sleep(0.2)


def test_ctrl_c_to_the_launcher_saves_one_checkpoint_that_resumes_under_torchrun_at_its_step(
    corpus: Path, tmp_path: Path
) -> None:
    out, log = tmp_path / "m.pt", tmp_path / "log.txt"
    args = f"{corpus} {TINY} --batch-size 8 --eval-every 5 --out {out}"
    launcher = _start(_torchrun(f"{args} --max-steps 100000"), log)
    _wait_for(out.with_name("m.last.pt"), launcher)
    launcher.send_signal(signal.SIGINT)
    launcher.wait(timeout=60)
    errors = [line for line in log.read_text().splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "interrupted at step" in errors[0] and "--resume" in errors[0], errors
    step = int(errors[0].split("interrupted at step ")[1].split(";")[0])
    assert _load(out.with_name("m.last.pt"))["metrics"]["step"] == step
    resumed = _run(_torchrun(f"{args} --resume --max-steps {step + 3}"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"done: step {step + 3}" in resumed.stdout


def _kill_one_rank(out: Path) -> None:
    ranks = subprocess.run(["pgrep", "-f", f"chargen train .*{out}"], capture_output=True, text=True)
    os.kill(int(ranks.stdout.split()[-1]), signal.SIGKILL)


def test_a_killed_rank_without_restarts_ends_every_process_promptly(corpus: Path, tmp_path: Path) -> None:
    out, log = tmp_path / "m.pt", tmp_path / "log.txt"
    launcher = _start(_torchrun(f"{corpus} {TINY} --batch-size 8 --eval-every 5 --max-steps 100000 --out {out}"), log)
    _wait_for(out.with_name("m.last.pt"), launcher)
    _kill_one_rank(out)
    assert launcher.wait(timeout=60) != 0
    assert subprocess.run(["pgrep", "-f", f"chargen train .*{out}"]).returncode == 1  # no rank left
