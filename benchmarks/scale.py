"""Corpora of any size: time to the first training step without and with the token cache, reading
and encoding throughput, peak RSS and peak anonymous memory, seconds per evaluation.

    python benchmarks/scale.py --sizes 100           # MB of corpus; 100 MB takes a few minutes
    python benchmarks/scale.py --sizes 100 1000 4000  # the issue's sizes (needs disk for 2x each)

The corpus is synthetic: the shared corpora (tinyshakespeare, songci) repeated to the size, written
under --workdir and deleted afterwards. Each run is a subprocess (`prepare` then one step of the
default 2x512 model, on as many threads as `chargen train` would use unless --threads says) with a
fresh or a warm $CHARGEN_HOME; the first run builds the token cache, the second reuses it. The
reference for memory is the corpus's own size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from chargen.threads import choose_threads, prepare_runtime

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def make_corpus(path: Path, megabytes: int) -> None:
    seed = b"".join((SHARED / name).read_bytes() for name in ("tinyshakespeare.txt", "songci.txt"))
    target = megabytes * 1_000_000
    with path.open("wb") as f:
        while f.tell() + len(seed) <= target:
            f.write(seed)
        f.write(seed[: target - f.tell()].rsplit(b"\n", 1)[0] + b"\n")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(corpus: Path, threads: int) -> None:
    """One run, in this process: figures as one JSON line."""
    import torch

    torch.set_num_threads(threads)
    from chargen.training.events import Callbacks, EvalEvent, StepEvent, WorkEvent
    from chargen.training.run import TrainRequest, prepare

    peak_anon = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_anon
        while not done.is_set():
            peak_anon = max(peak_anon, _status("RssAnon"))
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    figures: dict[str, float] = {}
    started = time.perf_counter()
    passes: dict[str, tuple[float, int, float, int]] = {}  # task -> time and bytes at its first and last report

    class Timing(Callbacks):
        def on_work(self, event: WorkEvent) -> None:
            now = time.perf_counter()
            first, first_done = passes.get(event.task, (now, event.done, now, event.done))[:2]
            passes[event.task] = (first, first_done, now, event.done)

        def on_step(self, event: StepEvent) -> None:
            figures.setdefault("first_step_s", time.perf_counter() - started)

        def on_eval(self, event: EvalEvent) -> None:
            figures["eval_s"] = event.eval_seconds

    request = TrainRequest(
        corpus=corpus,
        out=corpus.parent / "model.pt",
        train={"max_steps": 1, "max_time": 0, "eval_every": 1, "sample_chars": 0, "threads": threads},
    )
    trainer = prepare(request, Timing())
    figures["prepare_s"] = time.perf_counter() - started
    for task, (first, first_done, last, last_done) in passes.items():
        figures[f"{task}_mb_s"] = (last_done - first_done) / 1e6 / max(last - first, 1e-9)
    trainer.run()
    done.set()
    figures["peak_rss_mb"] = _status("VmHWM") / 1e6
    figures["peak_anon_mb"] = max(peak_anon, _status("RssAnon")) / 1e6
    print(json.dumps(figures))


def _rate(figures: dict[str, float], task: str) -> str:
    """MB/s of one pass over the corpus, between its first progress report and its last."""
    return f"{figures[f'{task}_mb_s']:.0f} MB/s" if f"{task}_mb_s" in figures else "-"


def run_one(corpus: Path, home: Path, threads: int) -> dict[str, float]:
    env = {**os.environ, "CHARGEN_HOME": str(home), "OMP_NUM_THREADS": str(threads)}
    prepare_runtime(env)  # the child waits for work as the chargen command does
    command = [sys.executable, __file__, "--child", str(corpus), "--threads", str(threads)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100], help="corpus sizes in MB")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: as many as chargen train uses)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = choose_threads(args.threads)
    if args.child is not None:
        child(args.child, threads)
        return
    print(f"CPU: {cpu_model()}; torch threads: {threads}; model: chargen defaults (2x512 LSTM)")
    for size in args.sizes:
        folder = Path(tempfile.mkdtemp(prefix="chargen-scale-", dir=args.workdir))
        try:
            corpus = folder / "big.txt"
            make_corpus(corpus, size)
            cold = run_one(corpus, folder / "home", threads)
            warm = run_one(corpus, folder / "home", threads)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        mb = size
        print(
            f"{mb:>6} MB  first step: cold {cold['first_step_s']:.1f}s, cached {warm['first_step_s']:.1f}s  "
            f"reading {_rate(cold, 'reading')}, encoding {_rate(cold, 'encoding')}, "
            f"whole cold prepare {mb / cold['prepare_s']:.0f} MB/s  "
            f"peak RSS cold {cold['peak_rss_mb']:.0f} / cached {warm['peak_rss_mb']:.0f} MB  "
            f"peak anonymous cold {cold['peak_anon_mb']:.0f} / cached {warm['peak_anon_mb']:.0f} MB "
            f"(corpus {mb} MB)  evaluation cold {cold['eval_s']:.1f}s / cached {warm['eval_s']:.1f}s"
        )


if __name__ == "__main__":
    main()
