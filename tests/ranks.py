"""Helpers for tests that run real ranks: torchrun (python -m torch.distributed.run) with gloo on
127.0.0.1, tiny models, one thread per rank."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_flags

# The tiny model for ranks: no dropout (ranks would each draw their own masks), a fixed seed.
TINY = " ".join(tiny_flags(embed=16, dropout=0, weight_drop=0, seed=3, precision="fp32", batch_size=None))
# The same for a fine-tune (--init-from): the shape and tokenizer come from the base, the vocabulary may grow.
FINE_TUNE = " ".join(
    ["--grow-vocab", *tiny_flags(dropout=0, weight_drop=0, seed=3, precision="fp32", layers=None, hidden=None)]
)

WORDS = [
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


def write_corpus(path: Path, words: int = 6000) -> Path:
    rng = random.Random(1)
    path.write_text(" ".join(rng.choice(WORDS) for _ in range(words)), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "PYTHONUNBUFFERED": "1"}


def torchrun(args: str, *launcher: str, procs: int = 2, port: int | None = None) -> list[str]:
    """`torchrun --nproc-per-node procs [launcher options] -m chargen train args`, with a c10d
    rendezvous on 127.0.0.1 unless the launcher options name another."""
    rendezvous = [] if any(o.startswith("--rdzv-backend") for o in launcher) else ["--rdzv-backend=c10d"]
    if not any(o.startswith(("--rdzv-endpoint", "--master-port")) for o in launcher):
        rendezvous.append(f"--rdzv-endpoint=127.0.0.1:{port or free_port()}")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={procs}",
        *rendezvous,
        *launcher,
        "-m",
        "chargen",
        "train",
        *args.split(),
    ]


def chargen(args: str) -> list[str]:
    return [sys.executable, "-m", "chargen", "train", *args.split()]


def run(cmd: list[str], timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=timeout, cwd=cwd)


_started: list[subprocess.Popen[str]] = []


def start(cmd: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen[str]:
    """In a session of its own, as a terminal's job: os.killpg sends it Ctrl-C as a terminal would."""
    proc = subprocess.Popen(
        cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, env=env(), cwd=cwd, start_new_session=True
    )
    _started.append(proc)
    return proc


@pytest.fixture(autouse=True)
def reap_launchers() -> Iterator[None]:
    """A failed test must not leave a launcher and its ranks running (and waiting on each other)."""
    yield
    while _started:
        launcher = _started.pop()
        if launcher.poll() is None:
            for pid in rank_pids(launcher):
                os.kill(pid, signal.SIGKILL)
            launcher.kill()
            launcher.wait()


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Error:")]


def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Poll until `path` exists; fail if the run ends first or takes longer than `timeout`."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, "the run ended before writing a checkpoint"
        assert time.monotonic() < deadline, f"no {path} after {timeout}s"
        time.sleep(0.1)


def rank_pids(launcher: subprocess.Popen[str]) -> list[int]:
    """The ranks a torchrun launcher started: its children that run chargen."""
    children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True)
    pids = [int(pid) for pid in children.stdout.split()]
    return sorted(pid for pid in pids if b"chargen" in Path(f"/proc/{pid}/cmdline").read_bytes())


def rank_pid(launcher: subprocess.Popen[str], rank: int) -> int:
    """The process of global rank `rank` among a launcher's children, read from its environment."""
    for pid in rank_pids(launcher):
        variables = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in variables:
            return pid
    raise AssertionError(f"no rank {rank} among the children of {launcher.pid}")
