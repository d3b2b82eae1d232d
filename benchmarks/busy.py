"""Two runs at once: the time of a `chargen train` run alone, and of each of two started together.

    python benchmarks/busy.py                          # chargen's settings against libgomp's default
    python benchmarks/busy.py --steps 30 --repeats 2

Each setting runs the real CLI in subprocesses: once alone, then twice at the same moment on the
same cores. The figure that matters is `pair / alone`: 2.0 is each run getting its fair half of
two cores; above it the two runs slow each other down (OpenMP threads spinning on each other's
time slices). Settings:
- chargen: the CLI as shipped (its thread count and brief spinning: GOMP_SPINCOUNT);
- libgomp default: torch imported before chargen, so chargen's spin count comes too
  late (libgomp reads it once, when torch loads it), and torch's own thread count;
- active / passive: OMP_WAIT_POLICY set explicitly;
- 1 thread: --threads 1 (each run alone then uses one core);
- glibc malloc: MALLOC_MMAP_MAX_ set to glibc's own default, so chargen leaves the allocator as
  glibc has it (freed blocks go back to the OS and are faulted in again: chargen.allocator).
Each time is the best of --repeats (other processes share the machine); wall time of the whole
process, start-up included, as a user sees it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chargen.allocator import user_tunes_malloc
from chargen.generation.kernels import cpu_model

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"
LATE_WAIT_POLICY = "import torch; from chargen.cli.app import main; main()"  # torch first: libgomp's default
AS_SHIPPED = "from chargen.cli.app import main; main()"
RUNTIME_VARIABLES = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")

SETTINGS: dict[str, tuple[str, dict[str, str], list[str]]] = {  # name: (program, environment, options)
    "chargen": (AS_SHIPPED, {}, []),
    "libgomp default": (LATE_WAIT_POLICY, {}, []),
    "active": (AS_SHIPPED, {"OMP_WAIT_POLICY": "active"}, []),
    "passive": (AS_SHIPPED, {"OMP_WAIT_POLICY": "passive"}, []),
    "1 thread": (AS_SHIPPED, {}, ["--threads", "1"]),
    "glibc malloc": (AS_SHIPPED, {"MALLOC_MMAP_MAX_": "65536"}, []),
}


def train_command(program: str, options: list[str], corpus: Path, out: Path, steps: int) -> list[str]:
    return [
        sys.executable, "-c", program, "train", str(corpus), "--out", str(out), "--quiet",
        "--max-steps", str(steps), "--eval-every", str(steps), "--val-frac", "0.01", *options,
    ]  # fmt: skip


def timed_runs(commands: list[list[str]], env: dict[str, str]) -> list[float]:
    """Start every command at once; each one's wall time."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
    times = [0.0] * len(procs)
    waiting = set(range(len(procs)))
    while waiting:
        for k in list(waiting):
            if procs[k].poll() is not None:
                times[k] = time.perf_counter() - start
                waiting.discard(k)
        time.sleep(0.01)
    for proc in procs:
        if proc.returncode:
            raise SystemExit(f"a run failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=SHAKESPEARE)
    parser.add_argument("--steps", type=int, default=30, help="training steps per run (default model)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, from: " + ", ".join(SETTINGS))
    args = parser.parse_args()
    if not args.corpus.is_file():
        raise SystemExit(f"no corpus at {args.corpus}; pass --corpus FILE")
    print(
        f"{cpu_model()} · {len(os.sched_getaffinity(0))} CPUs allowed · `chargen train` default model, "
        f"{args.steps} steps · best of {args.repeats}"
    )
    with tempfile.TemporaryDirectory() as folder:
        for name in args.settings.split(","):
            program, extra_env, options = SETTINGS[name]
            env = {k: v for k, v in os.environ.items() if k not in RUNTIME_VARIABLES and not user_tunes_malloc({k: v})}
            env |= extra_env | {"CHARGEN_HOME": folder}
            one = [train_command(program, options, args.corpus, Path(folder) / "a.pt", args.steps)]
            two = [*one, train_command(program, options, args.corpus, Path(folder) / "b.pt", args.steps)]
            alone = min(timed_runs(one, env)[0] for _ in range(args.repeats))
            pair = min(max(timed_runs(two, env)) for _ in range(args.repeats))
            print(f"{name:>16}: alone {alone:6.1f}s · each of two at once {pair:6.1f}s · pair/alone {pair / alone:.2f}")


if __name__ == "__main__":
    main()
