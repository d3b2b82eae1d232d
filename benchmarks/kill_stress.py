"""SIGKILL a real `chargen train` over and over and check that no kill loses the run.

Each life starts `chargen train` (the first fresh, the rest with --resume), waits until it has
written a new checkpoint, then kills it with SIGKILL: about half the time the moment a checkpoint
write is seen in progress (its temporary file exists), otherwise after a random delay. After each
kill the last checkpoint must load and validate, hold at least the step of the one before, and
the next life must resume from it. A last life runs to the end; its weights must then equal,
bit for bit, those of a run that was never interrupted (exact resume, one thread).

    python benchmarks/kill_stress.py             # 20 kills, prints "20/20 recovered"
    python benchmarks/kill_stress.py --kills 3   # the small version the test suite runs

Exit status 0 only if every kill recovered and the final weights match.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from chargen.checkpoint import load_checkpoint, load_model
from chargen.errors import ChargenError
from chargen.training.run import TrainRequest, prepare

CORPUS = """\
Whan that Aprille with his shoures soote
The droghte of March hath perced to the roote,
And bathed every veyne in swich licour
Of which vertu engendred is the flour;
Whan Zephirus eek with his sweete breeth
Inspired hath in every holt and heeth
The tendre croppes, and the yonge sonne
Hath in the Ram his halve cours yronne,
And smale foweles maken melodye,
That slepen al the nyght with open ye
"""

MODEL = {"layers": 1, "hidden": 32}
EVAL_EVERY = 2  # a checkpoint write every other step: kills often land inside one
STEPS_PER_KILL = 15  # generous: a life makes a save or two of progress before its kill
WAIT_SECONDS = 180.0  # for one life to write a checkpoint, on a loaded machine


def train_options(steps: int, seed: int) -> dict[str, object]:
    return {
        "batch_size": 8,
        "seq_len": 32,
        "max_steps": steps,
        "max_time": 0.0,  # a step budget only: the schedule then depends on steps alone
        "eval_every": EVAL_EVERY,
        "seed": seed,
        "threads": 1,
        "precision": "fp32",
    }


def train_command(corpus: Path, out: Path, steps: int, seed: int, resume: bool) -> list[str]:
    args = [sys.executable, "-m", "chargen", "train", str(corpus), "--out", str(out), "--quiet"]
    for key, value in {**MODEL, **train_options(steps, seed)}.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return [*args, "--resume"] if resume else args


@dataclass
class Kill:
    number: int
    mode: str  # "mid-write" (waited for a temporary file) or "random"
    step: int = -1  # of the last checkpoint after the kill
    landed_mid_write: bool = False  # a temporary file was left behind
    recovered: bool = False
    problem: str = ""


@dataclass
class Report:
    kills: list[Kill] = field(default_factory=list)
    final_ok: bool = False
    final_problem: str = ""

    @property
    def recovered(self) -> int:
        return sum(k.recovered for k in self.kills)

    @property
    def ok(self) -> bool:
        return self.final_ok and self.recovered == len(self.kills)


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


def checkpoint_stamp(path: Path) -> tuple[int, int] | None:
    """Changes whenever a save renames a new file over `path`."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def wait_for_new_save(process: subprocess.Popen[bytes], last: Path, before: tuple[int, int] | None) -> bool:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        stamp = checkpoint_stamp(last)
        if stamp is not None and stamp != before:
            return True
        time.sleep(0.01)
    return False


def wait_for_a_write(process: subprocess.Popen[bytes], folder: Path, limit: float) -> None:
    """Return as soon as a checkpoint's temporary file exists (a write is under way)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and process.poll() is None:
        if temp_files(folder):
            return
        time.sleep(0.0005)


def check_after_kill(kill: Kill, out: Path, last: Path, previous_step: int) -> None:
    """The last checkpoint loads, validates and rebuilds; the best one too; nothing went back."""
    try:
        loaded = load_model(last)
        kill.step = int(loaded.payload["resume"]["step"])
        if out.exists():
            load_model(out)
    except (ChargenError, KeyError) as err:
        kill.problem = f"checkpoint unusable after the kill: {err}"
        return
    if kill.step < previous_step:
        kill.problem = f"checkpoint went back from step {previous_step} to {kill.step}"
        return
    kill.recovered = True


def one_life(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as stderr:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)


def run(kills: int, workdir: Path, seed: int = 0, echo: bool = True) -> Report:
    """Kill a training run `kills` times, then let it finish and compare with a straight run."""
    rng = random.Random(seed)
    say = print if echo else (lambda *_: None)
    corpus = workdir / "chaucer.txt"
    corpus.write_text(CORPUS * 30, encoding="utf-8")
    out = workdir / "killed" / "m.pt"
    last = out.with_name("m.last.pt")
    log = workdir / "stderr.log"
    steps = STEPS_PER_KILL * kills + 20
    report = Report()
    previous_step = 0
    for number in range(1, kills + 1):
        kill = Kill(number, rng.choice(["mid-write", "random"]))
        report.kills.append(kill)
        process = one_life(train_command(corpus, out, steps, seed, resume=number > 1), log)
        try:
            if not wait_for_new_save(process, last, checkpoint_stamp(last)):
                kill.problem = f"no new checkpoint (exit status {process.poll()}); see {log}"
                break
            if kill.mode == "mid-write":
                wait_for_a_write(process, out.parent, limit=2.0)
            else:
                time.sleep(rng.uniform(0.0, 0.4))
            if process.poll() is not None:
                kill.problem = f"the run ended by itself (exit status {process.returncode}) before the kill"
                break
            process.send_signal(signal.SIGKILL)
        finally:
            if process.poll() is None:  # also when this script is interrupted
                process.kill()
            process.wait()
        kill.landed_mid_write = bool(temp_files(out.parent))
        check_after_kill(kill, out, last, previous_step)
        previous_step = max(previous_step, kill.step)
        where = "inside a checkpoint write" if kill.landed_mid_write else "between writes"
        say(
            f"kill {number:>2} ({kill.mode:>9}): landed {where}; last checkpoint at step {kill.step} "
            + ("loads" if kill.recovered else f"FAILED: {kill.problem}")
        )
        if not kill.recovered:
            break
    if report.recovered == kills:
        finish(report, corpus, out, steps, seed, log, workdir)
    say(f"{report.recovered}/{kills} recovered")
    mid_write = sum(k.landed_mid_write for k in report.kills)
    say(f"{mid_write} of the kills landed inside a checkpoint write")
    say(
        "resumed to the end; weights identical to an uninterrupted run"
        if report.final_ok
        else f"final run FAILED: {report.final_problem}"
    )
    return report


def finish(report: Report, corpus: Path, out: Path, steps: int, seed: int, log: Path, workdir: Path) -> None:
    """Resume to the end, then train the same run straight through and compare the weights."""
    result = subprocess.run(train_command(corpus, out, steps, seed, resume=True), capture_output=True, text=True)
    if result.returncode != 0:
        report.final_problem = f"the last resume exited {result.returncode}: {result.stderr.strip()}"
        return
    if temp_files(out.parent):
        report.final_problem = f"temporary files left behind: {[p.name for p in temp_files(out.parent)]}"
        return
    resumed = load_checkpoint(out.with_name("m.last.pt"))
    if resumed["resume"]["step"] != steps:
        report.final_problem = f"the run ended at step {resumed['resume']['step']}, not {steps}"
        return
    straight_out = workdir / "straight" / "m.pt"
    torch.set_num_threads(1)
    prepare(TrainRequest(corpus=corpus, out=straight_out, model=dict(MODEL), train=train_options(steps, seed))).run()
    straight = load_checkpoint(straight_out.with_name("m.last.pt"))
    different = [k for k in straight["model"] if not torch.equal(straight["model"][k], resumed["model"][k])]
    if different:
        report.final_problem = f"weights differ from an uninterrupted run: {', '.join(different)}"
        return
    report.final_ok = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="how many times to SIGKILL the run [20]")
    parser.add_argument("--seed", type=int, default=0, help="for the kill moments and the run [0]")
    parser.add_argument("--workdir", type=Path, help="keep the files here [a temporary folder]")
    args = parser.parse_args()
    if args.kills < 1:
        parser.error("--kills must be at least 1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = run(args.kills, args.workdir, args.seed)
    else:
        with tempfile.TemporaryDirectory(prefix="chargen-kill-") as folder:
            report = run(args.kills, Path(folder), args.seed)
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
