"""One process with 2 threads against 2 ranks with 1 thread each, on the same time budget.

    python benchmarks/distributed.py                  # 2 minutes per configuration
    python benchmarks/distributed.py --budget 90s

Both train chargen's default model on tinyshakespeare (../shared/corpora) from the command line,
exactly as a user would: `chargen train --threads 2` and `chargen train --procs 2 --threads 1`
(torchrun's launcher, gloo). Printed per configuration: training characters per second (evaluation
time left out), steps, and the validation bpc of the last evaluation. Then the all-reduce's share
of a 2-rank step: a gradient-sized all-reduce between two 1-thread gloo ranks, timed alone, over
the 2-rank run's seconds per step (an upper bound: DDP overlaps it with the backward pass).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chargen.generation.kernels import cpu_model

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"
CONFIGURATIONS = {
    "1 process × 2 threads": ["--threads", "2"],
    "2 processes × 1 thread": ["--threads", "1", "--procs", "2"],
}


def train(name: str, options: list[str], budget: str, folder: Path) -> dict[str, float]:
    out = folder / f"{len(list(folder.iterdir()))}.pt"
    command = [sys.executable, "-m", "chargen", "train", str(SHAKESPEARE), "--max-time", budget, "--out", str(out)]
    command += ["--layers", "2", "--hidden", "512"]  # the default shape, set: one process would choose its own
    started = time.perf_counter()
    own_threads = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # --threads decides
    subprocess.run([*command, *options, "--quiet"], check=True, env=own_threads)
    wall = time.perf_counter() - started
    checkpoint = torch.load(out.with_name(f"{out.stem}.last.pt"), weights_only=True)
    records = [json.loads(line) for line in out.with_name(f"{out.stem}.metrics.jsonl").read_text().splitlines()]
    config, metrics = checkpoint["train_config"], checkpoint["metrics"]
    training_seconds = metrics["elapsed"] - sum(r["eval_seconds"] for r in records)
    chars = metrics["step"] * config["batch_size"] * config["seq_len"] / metrics["tokens_per_char"]
    return {
        "chars_per_s": chars / training_seconds,
        "steps": metrics["step"],
        "seconds_per_step": training_seconds / metrics["step"],
        "val_bpc": records[-1]["val_bpc"],
        "wall": wall,
        "parameters": sum(w.numel() for w in checkpoint["model"].values()),
    }


def allreduce_seconds(parameters: int, repeats: int = 20) -> float:
    """Median seconds of one all-reduce of `parameters` floats between two 1-thread gloo ranks."""
    probe = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__]
    found = subprocess.run(
        [*probe, "--probe", str(parameters), str(repeats)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return float(found.stdout.split()[-1])


def probe(parameters: int, repeats: int) -> None:
    """Inside a rank: time the all-reduce DDP does once per step (rank 0 prints the median)."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    grads = torch.randn(parameters)
    times = []
    for _ in range(repeats + 2):
        dist.barrier()
        started = time.perf_counter()
        dist.all_reduce(grads)
        times.append(time.perf_counter() - started)
    if dist.get_rank() == 0:
        print(sorted(times[2:])[repeats // 2])
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="2m", help="time budget per configuration (chargen --max-time)")
    parser.add_argument("--probe", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        probe(*args.probe)
        return
    print(f"{cpu_model()} · {os.cpu_count()} CPUs · {datetime.date.today()} · torch {torch.__version__}")
    print(f"chargen's default model on {SHAKESPEARE.name}, {args.budget} of training each")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, options in CONFIGURATIONS.items():
            results[name] = r = train(name, options, args.budget, Path(folder))
            print(
                f"{name:24} {r['chars_per_s']:8,.0f} chars/s  {r['steps']:5} steps  "
                f"{r['seconds_per_step']:.3f} s/step  val {r['val_bpc']:.3f} bpc  ({r['wall']:.0f} s wall)"
            )
    one, two = results.values()
    print(f"2 ranks / 1 process: ×{two['chars_per_s'] / one['chars_per_s']:.2f} chars/s")
    seconds = allreduce_seconds(int(two["parameters"]))
    print(
        f"all-reduce of {two['parameters'] / 1e6:.2f}M gradients between 2 gloo ranks: {seconds * 1000:.1f} ms, "
        f"{seconds / two['seconds_per_step']:.0%} of a 2-rank step (at most: DDP overlaps it with backward)"
    )


if __name__ == "__main__":
    main()
