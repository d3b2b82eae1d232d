"""Two runs at once: the time of a `chargen train` run alone, and of each of two started together.

    python benchmarks/busy.py                          # chargen's settings against libgomp's default
    python benchmarks/busy.py --steps 30 --repeats 2
    python benchmarks/busy.py --steps 150 --sample-chars 100000 --repeats 3   # training beside sampling

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
With --sample-chars N the pair is a `chargen train` run and `chargen sample` of N characters (one
stream, from the checkpoint of a first training run) started --sample-after seconds into it, past
its start-up: sampling from the last checkpoint while training goes on. Two samplers are set side
by side, each with its own training run: as shipped (its threads follow the load) and with
`--threads` fixed at the allowed CPUs (the reference: the sampler before it followed the load).
Each command's time beside the other is set against its own time alone; the sampler should end
first, so that it has training beside it all along. Beside another process the times are
bimodal (it depends on which of the two gives way first), so each repeat is printed and the
median taken. Without --sample-chars each time is the best of --repeats (other processes share
the machine). All are wall times of the whole process, start-up included, as a user sees it.
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def sample_command(program: str, options: list[str], checkpoint: Path, chars: int) -> list[str]:
    return [sys.executable, "-c", program, "sample", str(checkpoint), "--length", str(chars), "--seed", "1", *options]


def timed_runs(commands: list[list[str]], env: dict[str, str], delays: list[float] | None = None) -> list[float]:
    """Start every command at once (or each after its delay); each one's wall time from its start."""
    delays = delays or [0.0] * len(commands)
    begin = time.perf_counter()
    procs: list[subprocess.Popen[bytes] | None] = [None] * len(commands)
    starts, times = [0.0] * len(commands), [0.0] * len(commands)
    waiting = set(range(len(commands)))
    while waiting:
        now = time.perf_counter()
        for k in list(waiting):
            proc = procs[k]
            if proc is None and now - begin >= delays[k]:
                starts[k], procs[k] = (
                    now,
                    subprocess.Popen(commands[k], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE),
                )
            elif proc is not None and proc.poll() is not None:
                times[k] = now - starts[k]
                waiting.discard(k)
        time.sleep(0.01)
    for proc in procs:
        if proc is not None and proc.returncode:
            raise SystemExit(f"a run failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return times


def sampling_beside_training(
    args: argparse.Namespace,
    program: str,
    options: list[str],
    env: dict[str, str],
    checkpoint: Path,
    train: list[str],
    train_alone: float,
) -> None:
    """Training beside the sampler as shipped, and beside one with its threads fixed."""
    fixed = ["--threads", str(len(os.sched_getaffinity(0)))]
    timed_runs([sample_command(program, options, checkpoint, 1)], env)  # measures the kernels, alone
    for label, extra in (("shipped", []), ("fixed threads", fixed)):
        sample = sample_command(program, [*options, *extra], checkpoint, args.sample_chars)
        sample_alone = statistics.median(timed_runs([sample], env)[0] for _ in range(args.repeats))
        beside = [timed_runs([train, sample], env, [0.0, args.sample_after]) for _ in range(args.repeats)]
        train_beside, sample_beside = (statistics.median(times[k] for times in beside) for k in (0, 1))
        each = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in beside)
        print(
            f"  sampler {label:>13}: sample alone {sample_alone:5.1f}s, beside training {sample_beside:5.1f}s "
            f"(x{sample_beside / sample_alone:.2f}) · training beside it {train_beside:5.1f}s "
            f"(x{train_beside / train_alone:.2f}) · each repeat, train/sample: {each}s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=SHAKESPEARE)
    parser.add_argument("--steps", type=int, default=30, help="training steps per run (default model)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated, from: " + ", ".join(SETTINGS))
    parser.add_argument("--sample-chars", type=int, default=0, help="pair training with sampling this many characters")
    parser.add_argument("--sample-after", type=float, default=6.0, help="seconds into training")
    args = parser.parse_args()
    if not args.corpus.is_file():
        raise SystemExit(f"no corpus at {args.corpus}; pass --corpus FILE")
    print(
        f"{cpu_model()} · {len(os.sched_getaffinity(0))} CPUs allowed · `chargen train` default model, "
        f"{args.steps} steps · {args.repeats} repeats"
    )
    with tempfile.TemporaryDirectory() as folder:
        for name in args.settings.split(","):
            program, extra_env, options = SETTINGS[name]
            env = {k: v for k, v in os.environ.items() if k not in RUNTIME_VARIABLES and not user_tunes_malloc({k: v})}
            env |= extra_env | {"CHARGEN_HOME": folder}
            first, second = (Path(folder) / f"{k}.pt" for k in "ab")
            train = train_command(program, options, args.corpus, first, args.steps)
            other_train = train_command(program, options, args.corpus, second, args.steps)
            alone = min(timed_runs([train], env)[0] for _ in range(args.repeats))
            if not args.sample_chars:
                pair = min(max(timed_runs([train, other_train], env)) for _ in range(args.repeats))
                ratio = f"pair/alone {pair / alone:.2f}"
                print(f"{name:>16}: alone {alone:6.1f}s · each of two at once {pair:6.1f}s · {ratio}")
                continue
            print(f"{name:>16}: train alone {alone:6.1f}s")
            sampling_beside_training(args, program, options, env, first, other_train, alone)


if __name__ == "__main__":
    main()
