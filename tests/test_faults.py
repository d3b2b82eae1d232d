"""Faults while training: SIGKILL at random moments, a disk that fills or turns read-only during a
save, a write that fails half-way, and Ctrl-C pressed again while the interrupted run saves.

The first Ctrl-C itself (finish the step, save, say where, exit 130, resume) is
test_cli_train::test_ctrl_c_saves_a_checkpoint_that_resumes.
"""

from __future__ import annotations

import errno
import importlib.util
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import chargen.atomic
from chargen.checkpoint import load_checkpoint, load_model, save_checkpoint
from chargen.cli.progress import TrainingDisplay
from chargen.errors import CheckpointError
from tests.helpers import FAST, assert_clear_error, big_corpus, run_cli

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_kill_stress() -> Any:
    spec = importlib.util.spec_from_file_location("kill_stress", BENCHMARKS / "kill_stress.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["kill_stress"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# --- SIGKILL -----------------------------------------------------------------------------------


def test_sigkill_at_random_moments_never_loses_the_run(tmp_path: Path) -> None:
    """Three kills of a real `chargen train` (the stress script runs twenty): after each, the last
    checkpoint loads; the resumed run ends with the weights of a run never interrupted."""
    report = load_kill_stress().run(kills=3, workdir=tmp_path, seed=1, echo=False)
    problems = [k.problem for k in report.kills if not k.recovered]
    assert report.recovered == 3, problems
    assert report.final_ok, report.final_problem


def test_a_sigkill_inside_a_checkpoint_write_leaves_the_previous_checkpoint_whole(tmp_path: Path) -> None:
    """A real `chargen train` frozen (SIGSTOP) the moment a checkpoint's temporary file appears,
    then SIGKILLed: when that temporary file is still there afterwards, the kill provably landed
    inside the write (a finished write renames it away). The checkpoint it was to replace is then
    byte for byte the one before the write, it loads, and the run resumes from it to the end."""
    stress = load_kill_stress()
    corpus, log = tmp_path / "chaucer.txt", tmp_path / "stderr.log"
    corpus.write_text(stress.CORPUS * 30, encoding="utf-8")
    out = tmp_path / "run" / "m.pt"
    last, steps = out.with_name("m.last.pt"), 40
    landed: tuple[Path, bytes] | None = None  # the checkpoint being replaced, and its bytes before
    for life in range(8):  # a life whose freeze comes just after the rename tries again
        process = stress.one_life(stress.train_command(corpus, out, steps, 0, resume=life > 0), log)
        try:
            assert stress.wait_for_new_save(process, last, stress.checkpoint_stamp(last)), log.read_text()
            while process.poll() is None and not (temps := stress.temp_files(out.parent)):
                time.sleep(0.0002)
            process.send_signal(signal.SIGSTOP)
            if process.poll() is None and temps:
                target = out.parent / temps[0].name[1:].rsplit(".", 2)[0]  # .m.last.pt.XXXXXXXX.tmp
                before = target.read_bytes()
                process.send_signal(signal.SIGKILL)
                process.wait()
                if temps[0].exists():
                    landed = target, before
                    break
        finally:
            process.kill()
            process.wait()
    assert landed is not None, "no kill landed inside a checkpoint write in 8 tries"
    target, before = landed
    assert target.read_bytes() == before
    step = int(load_checkpoint(last)["resume"]["step"])
    assert load_model(target).model is not None and 0 < step < steps
    resumed = subprocess.run(stress.train_command(corpus, out, steps, 0, resume=True), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(last)["resume"]["step"] == steps and temp_files(out.parent) == []


# --- a full disk, a read-only folder, a failing write ------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MB filesystem (tmpfs) that the test can fill up or make read-only."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)], capture_output=True, text=True
    )
    if mounted.returncode != 0:  # not root: test_a_write_that_fails_half_way_* simulates this instead
        pytest.skip(f"mounting a tmpfs needs root: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(folder: Path) -> None:
    """Use up every free byte of the filesystem holding `folder`."""
    with open(folder / "filler", "wb", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as err:
                assert err.errno == errno.ENOSPC


def after_first_evaluation(monkeypatch: pytest.MonkeyPatch, fault: Any) -> dict[str, bytes]:
    """Run `fault` once, right after the first evaluation's checkpoints are written; returns
    what the folder held at that moment."""
    snapshot: dict[str, bytes] = {}
    on_eval = TrainingDisplay.on_eval

    def then_fault(self: TrainingDisplay, event: Any) -> None:
        on_eval(self, event)
        if not snapshot:
            snapshot.update(fault())

    monkeypatch.setattr(TrainingDisplay, "on_eval", then_fault)
    return snapshot


def test_full_disk_during_a_save_stops_with_one_line_and_keeps_the_checkpoint(
    small_disk: Path, corpus_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_fills() -> dict[str, bytes]:
        before = contents(small_disk)
        fill(small_disk)
        return before

    before = after_first_evaluation(monkeypatch, disk_fills)
    out = small_disk / "m.pt"
    outcome = run_cli(capsys, monkeypatch, "train", corpus_file, *FAST, "--max-steps", "40", "--eval-every", "5",
                      "--out", out, "--quiet")  # fmt: skip
    assert_clear_error(outcome, "cannot write checkpoint", "No space left on device", "previous checkpoint is intact")
    assert set(before) == {"m.pt", "m.last.pt", "m.metrics.jsonl"}
    after = contents(small_disk)
    assert {name: after[name] for name in before} == before  # byte-identical
    assert load_checkpoint(out.with_name("m.last.pt"))["resume"]["step"] == 5
    assert temp_files(small_disk) == []


def test_read_only_folder_during_a_save_stops_with_one_line_and_keeps_the_checkpoint(
    small_disk: Path, corpus_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # chmod does not stop root, so the filesystem itself turns read-only.
    def remount_read_only() -> dict[str, bytes]:
        before = contents(small_disk)
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
        return before

    before = after_first_evaluation(monkeypatch, remount_read_only)
    out = small_disk / "m.pt"
    outcome = run_cli(capsys, monkeypatch, "train", corpus_file, *FAST, "--max-steps", "40", "--eval-every", "5",
                      "--out", out, "--quiet")  # fmt: skip
    assert_clear_error(outcome, f"cannot write a checkpoint in {small_disk}: Read-only file system", "another --out")
    assert contents(small_disk) == before and len(before) == 3
    assert load_model(out.with_name("m.last.pt")).payload["resume"]["step"] == 5


class FailingFile(io.RawIOBase):
    """The real file, until `limit` bytes have gone to it: then ENOSPC, as from a full disk."""

    def __init__(self, real: Any, limit: int) -> None:
        self.real, self.limit, self.written = real, limit, 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.written + len(data) > self.limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written += len(data)
        return self.real.write(data)

    def fileno(self) -> int:
        return self.real.fileno()

    def flush(self) -> None:
        self.real.flush()

    def close(self) -> None:
        if not self.closed:
            super().close()  # flushes first
            self.real.close()


def test_a_write_that_fails_half_way_keeps_the_previous_checkpoint(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same fault simulated at the file-write layer: runs without root, and fails mid-file."""
    target = tmp_path / "m.pt"
    payload = load_checkpoint(tiny_checkpoint)
    save_checkpoint(target, payload)
    before = target.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(
        chargen.atomic.os, "fdopen", lambda fd, mode, **kw: FailingFile(real_fdopen(fd, mode, **kw), len(before) // 2)
    )
    with pytest.raises(CheckpointError, match="No space left on device; the previous checkpoint is intact"):
        save_checkpoint(target, payload)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_a_metrics_log_that_cannot_be_written_is_one_line(
    tmp_path: Path, corpus_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "m.metrics.jsonl").mkdir()  # the log's name taken by a folder: its append fails
    outcome = run_cli(capsys, monkeypatch, "train", corpus_file, *FAST, "--max-steps", "5", "--out",
                      tmp_path / "m.pt", "--quiet")  # fmt: skip
    assert_clear_error(outcome, "Is a directory", "m.metrics.jsonl")
    assert load_checkpoint(tmp_path / "m.last.pt")["resume"]["step"] == 5


# --- Ctrl-C twice ------------------------------------------------------------------------------

# `chargen train` with two marks for the test: a file touched once training has started, and a
# torch.save slowed down (after writing, before the fsync and rename) so a signal can land in it.
SLOW_SAVE = """
import pathlib, sys, time
import torch
import chargen.training.trainer

started, saving = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
real_save, real_step = torch.save, chargen.training.trainer.Trainer.train_step

def slow_save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    saving.touch()
    time.sleep(2.0)

def step(self):
    started.touch()
    return real_step(self)

torch.save = slow_save
chargen.training.trainer.Trainer.train_step = step
sys.argv = ["chargen", *sys.argv[3:]]
from chargen.cli.app import main
main()
"""


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def test_a_second_ctrl_c_during_the_save_is_ignored(tmp_path: Path, corpus_file: Path) -> None:
    out = tmp_path / "m.pt"
    started, saving = tmp_path / "started", tmp_path / "saving"
    args = ["train", str(corpus_file), *FAST, "--max-steps", "100000", "--eval-every", "100000", "--out", str(out)]
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_SAVE, str(started), str(saving), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(started, process)
        process.send_signal(signal.SIGINT)  # finish the step, then save
        wait_for(saving, process)  # the checkpoint is half written
        process.send_signal(signal.SIGINT)
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: interrupted at step "), stderr
    step = int(lines[0].split("interrupted at step ")[1].split(";")[0])
    assert f"saved {out.with_name('m.last.pt')}" in lines[0] and "--resume" in lines[0]
    assert load_model(out.with_name("m.last.pt")).payload["resume"]["step"] == step
    assert temp_files(tmp_path) == []


# --- the token cache ---------------------------------------------------------------------------


def cache_files(home: Path) -> list[str]:
    folder = home / "cache"
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.is_dir() else []


def train_cli(corpus: Path, home: Path, **popen: Any) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "chargen", "train", str(corpus), *FAST, "--max-steps", "1", "--quiet"]
    env = {**os.environ, "CHARGEN_HOME": str(home)}
    return subprocess.Popen(command, env=env, cwd=corpus.parent, stderr=subprocess.PIPE, text=True, **popen)


def test_a_full_disk_while_the_cache_is_written_is_one_line_and_leaves_no_cache(tmp_path: Path) -> None:
    import resource

    def limit_file_size() -> None:  # writes past 200 KB fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    corpus, home = big_corpus(tmp_path / "big.txt", 1), tmp_path / "home"
    process = train_cli(corpus, home, preexec_fn=limit_file_size)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert stderr.startswith("Error: cannot write the token cache in ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr and cache_files(home) == []
    assert train_cli(corpus, home).wait(timeout=120) == 0
    assert [name.endswith(".tokens") for name in cache_files(home)] == [True]


def test_sigkill_while_the_cache_is_written_leaves_nothing_a_later_run_trusts(tmp_path: Path) -> None:
    corpus, home = big_corpus(tmp_path / "big.txt", 24), tmp_path / "home"
    process = train_cli(corpus, home)
    deadline = time.monotonic() + 120
    while not any(name.endswith(".tmp") for name in cache_files(home)):
        assert process.poll() is None and time.monotonic() < deadline, "the cache was never being written"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert not any(name.endswith(".tokens") for name in cache_files(home))
    assert train_cli(corpus, home).wait(timeout=300) == 0
    assert [name.endswith(".tokens") for name in cache_files(home)] == [True]  # the leftover is gone
