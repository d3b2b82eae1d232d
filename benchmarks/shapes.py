"""Validation bpc after a step budget, per model shape: the curves behind chargen's shape choice.

    python benchmarks/shapes.py                       # every candidate shape at 150..2400 steps, 2 at a time
    python benchmarks/shapes.py --shapes 2x512,2x256 --steps 300 --jobs 1
    python benchmarks/shapes.py --rates --budget 10m  # steps/s of each shape here, as `chargen train` measures them

Each run is `chargen train tinyshakespeare.txt --max-steps N --eval-every N --threads 1` with the
shape's --layers, --hidden, --batch-size and --seq-len and every other setting at its default, so
its learning rate decays over exactly N steps, as a time-budgeted run's does over its time. What a
shape reaches after N steps does not depend on how fast the machine is, so these figures hold on
every CPU kind; how many steps a budget of time buys is what chargen measures on the user's
machine (chargen.training.shape). The table printed at the end is the form of
chargen.training.shape.CURVES; steps/s are 1-thread figures, indicative only unless run alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from chargen.threads import prepare_runtime

prepare_runtime()  # before torch loads: idle threads wait as under the chargen command

import torch  # noqa: E402

from chargen.checkpoint import load_checkpoint  # noqa: E402
from chargen.generation.kernels import cpu_model  # noqa: E402

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"
SHAPES = "2x512,2x384,2x256,1x512,1x256"
STEPS = "150,300,600,1200,2400"


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """'2x512' or '2x512/32x64' (layers x hidden / batch x window) -> (layers, hidden, batch, window)."""
    model, _, batch = text.partition("/")
    layers, hidden = (int(part) for part in model.split("x"))
    streams, window = (int(part) for part in (batch or "64x64").split("x"))
    return layers, hidden, streams, window


def run(corpus: Path, shape: str, steps: int, extra: list[str]) -> dict | None:
    layers, hidden, batch, window = parse_shape(shape)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.pt"
        command = [
            sys.executable,
            "-m",
            "chargen",
            "train",
            str(corpus),
            "--max-steps",
            str(steps),
            "--eval-every",
            str(steps),
            "--threads",
            "1",
            "--layers",
            str(layers),
            "--hidden",
            str(hidden),
            "--batch-size",
            str(batch),
            "--seq-len",
            str(window),
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
        if subprocess.run(command).returncode:
            print(f"{shape} at {steps} steps: failed (its error above)", flush=True)
            return None
        last = json.loads(out.with_name("model.metrics.jsonl").read_text().splitlines()[-1])
        whole = load_checkpoint(out)["metrics"]["result_bpc"]  # the whole validation tail
    seconds = last["elapsed"] - last["eval_seconds"]
    result = {"shape": shape, "steps": last["step"], "val_bpc": whole, "steps_per_s": last["step"] / seconds}
    if extra:
        result["options"] = " ".join(extra)
    print(json.dumps(result), flush=True)
    return result


def rates(corpus: Path, budget: str, precision: str) -> None:
    """The chooser as `chargen train CORPUS --max-time BUDGET` runs it (torch's default threads):
    each candidate's steps/s here, relative to the default shape's, and the shape chosen."""
    from chargen.config import parse_duration
    from chargen.training.events import Callbacks
    from chargen.training.run import TrainRequest, prepare
    from chargen.training.shape import DEFAULT

    seconds = parse_duration(budget)
    with tempfile.TemporaryDirectory() as tmp:
        request = TrainRequest(corpus, Path(tmp) / "model.pt", train={"max_time": seconds, "precision": precision})
        choice = prepare(request, Callbacks()).shape_choice
    assert choice is not None
    default = next(p.rate for p in choice.predictions if p.shape == DEFAULT)
    print(f"measured in {choice.seconds:.1f}s; steps/s, ratio to {DEFAULT}, predicted steps and bpc in {budget}:")
    for p in choice.predictions:
        print(f"  {p.shape!s:32} {p.rate:7.2f}  x{p.rate / default:5.2f}  {p.steps:7.0f}  {p.bpc:.3f}")
    print(f"chosen: {choice.shape}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="?", type=Path, default=SHAKESPEARE)
    parser.add_argument("--shapes", default=SHAPES, help=f"comma-separated, like 2x512 or 2x256/32x64 [{SHAPES}]")
    parser.add_argument("--steps", default=STEPS, help=f"comma-separated step budgets [{STEPS}]")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, 1 thread each")
    parser.add_argument("--options", default="", help="more `chargen train` options, as one string")
    parser.add_argument("--save", type=Path, help="append each result to this JSON-lines file")
    parser.add_argument("--rates", action="store_true", help="measure steps/s of each shape as `chargen train` does")
    parser.add_argument("--budget", default="3m", help="with --rates: the time budget to choose for [3m]")
    parser.add_argument("--precision", default="auto", help="with --rates: as `chargen train --precision` [auto]")
    args = parser.parse_args()
    if not args.corpus.is_file():
        sys.exit(f"corpus {args.corpus} not found; pass a text file")
    if args.rates:
        isa = os.environ.get("CHARGEN_NATIVE_ISA")
        emulated = f", emulated {isa}" if isa else ""
        print(f"{cpu_model()}{emulated}, corpus {args.corpus}, threads {torch.get_num_threads()}")
        rates(args.corpus, args.budget, args.precision)
        return
    shapes = args.shapes.split(",")
    budgets = [int(n) for n in args.steps.split(",")]
    print(f"{cpu_model()}, corpus {args.corpus}, 1 thread per run, {args.jobs} at once")
    jobs = [(shape, n) for n in budgets for shape in shapes]
    with ThreadPoolExecutor(args.jobs) as pool:
        done = pool.map(lambda job: run(args.corpus, *job, args.options.split()), jobs)
        results = [r for r in done if r is not None]
    if args.save:
        with open(args.save, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in results)
    print("validation bpc after N steps (steps/s at 1 thread):")
    print("shape".ljust(14) + "".join(f"{n:>9}" for n in budgets))
    for shape in shapes:
        row = {r["steps"]: r for r in results if r["shape"] == shape}
        rate = sum(r["steps_per_s"] for r in row.values()) / max(len(row), 1)
        cells = "".join(f"{row[n]['val_bpc']:9.3f}" if n in row else " " * 9 for n in budgets)
        print(shape.ljust(14) + cells + f"   ({rate:.2f} steps/s)")


if __name__ == "__main__":
    main()
