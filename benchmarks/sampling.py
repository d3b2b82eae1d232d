"""Sampling speed: every candidate step, the auto choice and the `chargen sample` CLI against the
plain reference loop, in the same run.

    python benchmarks/sampling.py                        # untrained 2×512 LSTM, torch's threads
    python benchmarks/sampling.py --threads 1
    python benchmarks/sampling.py --checkpoint ckpt.pt   # a trained model: the quality line means something
    python benchmarks/sampling.py --no-cli               # skip the CLI rows
    python benchmarks/sampling.py --checkpoint ckpt.pt --cli-precision int8-fused
                                                         # the CLI rows with a named step
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/sampling.py --isa avx2
                                                         # an AVX2-only CPU, emulated on an AVX-512 one

The model is a 2×512 LSTM over the tinyshakespeare characters (../shared/corpora, else a built-in
text), untrained unless --checkpoint is given: speed does not depend on the weights. The
reference is what a plain sampling loop does: the model's forward (nn.LSTM) over one token,
softmax, multinomial, per step; it runs with oneDNN on and off (torch's CPU LSTM uses oneDNN by
default) and the faster counts. Each figure is the best of --repeats runs, since other processes
share the machine. The candidates are every usable product (chargen.generation.products) on one
thread and on all of them; `auto` is what chargen.generation.kernels measures and caches (here
in a temporary CHARGEN_HOME, so it is measured afresh). The CLI rows time `chargen sample` in a
subprocess (its own environment, as the chargen command prepares it), net of its start-up,
which is timed with --length 1 and printed. The quality line gives bits per character of
held-out text read through each step. --isa forces the native step's path (CHARGEN_NATIVE_ISA,
also for the CLI rows); with torch and oneDNN kept to AVX2 by their variables on a CPU that has
AVX-512, the figures are labelled "emulated AVX2-only".
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from chargen.checkpoint import load_model
from chargen.config import ModelConfig, SampleConfig
from chargen.data.tokenizers import CharTokenizer
from chargen.generation import fused
from chargen.generation.inference import step_precisions
from chargen.generation.kernels import cpu_model, torch_threads
from chargen.generation.sampler import Sampler
from chargen.model import CharLM

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"
BUILTIN = """\
First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?
"""
TEMPERATURE = 0.8


def reference_loop(model: CharLM, streams: int, length: int, mkldnn: bool) -> None:
    """The plain way: the whole model over one token per step, then softmax and multinomial."""
    torch.backends.mkldnn.enabled = mkldnn
    try:
        with torch.inference_mode():
            token = torch.zeros(streams, 1, dtype=torch.long)
            state = None
            for _ in range(length):
                logits, state = model(token, state)
                token = torch.multinomial((logits[:, -1] / TEMPERATURE).softmax(dim=-1), 1)
    finally:
        torch.backends.mkldnn.enabled = True


def chars_per_second(run: Callable[[int, int], object], streams: int, length: int, repeats: int) -> float:
    run(streams, 8)  # warm up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run(streams, length)
        best = min(best, time.perf_counter() - start)
    return streams * length / best


def held_out_bpc(sampler: Sampler, text: str, rows: int = 16) -> float:
    """Bits per character of `text`, cut into `rows` streams read through the sampler's step."""
    ids = sampler.tokenizer.encode(text).long()
    width = len(ids) // rows
    ids = ids[: rows * width].view(rows, width)
    stepper, nats = sampler.stepper, 0.0
    with torch.inference_mode():
        inner = stepper.enter(sampler.model.initial_state(rows))
        for t in range(width - 1):
            logits, inner = stepper.step(ids[:, t], inner)
            nats -= float(logits.log_softmax(dim=-1).gather(1, ids[:, t + 1 : t + 2]).sum())
    return nats / math.log(2) / (rows * (width - 1))


def build_model(checkpoint: Path | None, text: str) -> tuple[CharLM, CharTokenizer, str]:
    if checkpoint is not None:
        loaded = load_model(checkpoint)
        return loaded.model, loaded.tokenizer, f"{checkpoint}"
    torch.manual_seed(0)
    tokenizer = CharTokenizer.train(text)
    model = CharLM(ModelConfig(tokenizer.vocab_size, layers=2, hidden=512, dropout=0.0)).eval()
    return model, tokenizer, "untrained"


def cli_seconds(checkpoint: Path, streams: int, length: int, home: str, precision: str) -> float:
    """Wall time of `chargen sample` writing `streams` samples of `length` characters to a pipe."""
    command = [sys.executable, "-m", "chargen", "sample", str(checkpoint), "--length", str(length), "--seed", "1"]
    command += ["-n", str(streams), "--temperature", str(TEMPERATURE), "--precision", precision]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "CHARGEN_HOME": home})
    return time.perf_counter() - start


def cli_rows(checkpoint: Path, runs: list[tuple[int, int]], precision: str) -> None:
    with tempfile.TemporaryDirectory() as home:
        cli_seconds(checkpoint, 1, 1, home, precision)  # measures and caches the kernel choice
        startup = min(cli_seconds(checkpoint, 1, 1, home, precision) for _ in range(2))
        print(f"CLI (--precision {precision}): start-up (--length 1) {startup:.2f} s, mostly importing torch")
        for streams, length in runs:
            wall = min(cli_seconds(checkpoint, streams, length, home, precision) for _ in range(2))
            net = streams * length / max(wall - startup, 1e-9)
            label = f"{streams:>2} stream{'s' if streams > 1 else ' '} × {length} chars"
            print(f"CLI: {label}: {wall:.2f} s wall, {net:,.0f} chars/s net of start-up")


def cpu_kind() -> str:
    """The CPU as the figures stand for it: an AVX2-only one when torch, oneDNN and the native
    step are all kept to AVX2 on a CPU with AVX-512."""
    kept = {os.environ.get("ATEN_CPU_CAPABILITY", "").lower(), os.environ.get("ONEDNN_MAX_CPU_ISA", "").lower()}
    emulated = kept == {"avx2"} and fused.isa_in_use() == "avx2" and "avx512" in fused.runnable_isas()
    names = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", fused.ISA_VARIABLE)
    variables = " ".join(f"{name}={os.environ[name]}" for name in names if name in os.environ) or "no variables"
    return f"{'emulated AVX2-only' if emulated else 'the CPU as it is'} ({variables})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--checkpoint", type=Path, help="benchmark this model instead of an untrained 2×512")
    parser.add_argument("--single-chars", type=int, default=2000, help="characters for the single stream")
    parser.add_argument("--batch-chars", type=int, default=300, help="characters per stream for 64 streams")
    parser.add_argument("--cli-chars", type=int, default=20000, help="characters for the CLI's single stream")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-cli", action="store_true", help="skip timing the chargen sample CLI (needs --checkpoint)")
    parser.add_argument("--isa", choices=fused.runnable_isas(), help="force the native step's path")
    parser.add_argument(
        "--cli-precision",
        default="auto",
        help="the CLI rows' --precision (int8-fused under emulated AVX2: fbgemm keeps using AVX512-VNNI there)",
    )
    args = parser.parse_args()
    if args.isa:
        os.environ[fused.ISA_VARIABLE] = args.isa
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ["CHARGEN_HOME"] = tempfile.mkdtemp()  # auto measures afresh, as on first use

    text = SHAKESPEARE.read_text(encoding="utf-8") if SHAKESPEARE.is_file() else BUILTIN * 200
    model, tokenizer, source = build_model(args.checkpoint, text)
    m, threads = model.config, torch.get_num_threads()
    print(
        f"{m.layers}×{m.hidden} {m.cell.upper()} · vocab {m.vocab_size} · {source} · torch {torch.__version__} · "
        f"{cpu_model()} · threads {threads} · OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', '-')} · "
        f"temperature {TEMPERATURE}, no top-k"
    )
    print(f"native step: {fused.describe()} · {cpu_kind()}")
    candidates = [(p, t) for p in step_precisions(model, torch.device("cpu")) for t in sorted({1, threads})]
    auto = Sampler(model, tokenizer)
    print(f"auto: {auto.kernel.describe()}")

    def rate(sampler: Sampler, streams: int, length: int) -> float:
        def generate(b: int, n: int) -> object:
            return sampler.generate([""] * b, SampleConfig(length=n, temperature=TEMPERATURE, seed=1))

        return chars_per_second(generate, streams, length, args.repeats)

    for streams, length in ((1, args.single_chars), (64, args.batch_chars)):
        reference = {  # a quarter of the length: the reference is slow, and its rate is steady
            mkldnn: chars_per_second(
                lambda b, n, mkldnn=mkldnn: reference_loop(model, b, n, mkldnn), streams, length // 4, args.repeats
            )
            for mkldnn in (True, False)
        }
        best_reference = max(reference.values())
        print(
            f"{streams:>2} stream{'s' if streams > 1 else ' '} · reference {best_reference:>9,.0f} chars/s "
            f"[with oneDNN {reference[True]:,.0f}, without {reference[False]:,.0f}]"
        )
        for precision, t in candidates:
            with torch_threads(t):
                speed = rate(Sampler(model, tokenizer, precision=precision), streams, length)
            print(f"   {precision}/{t}t {speed:>9,.0f} chars/s ({speed / best_reference:.1f}x)")
        speed = rate(auto, streams, length)
        print(
            f"   auto ({auto.kernel.for_batch(streams).label}) {speed:>9,.0f} chars/s ({speed / best_reference:.1f}x)"
        )

    held_out = text[-20000:]
    bpc = {
        p: held_out_bpc(Sampler(model, tokenizer, precision=p), held_out) for p, _ in candidates[:: len({1, threads})]
    }
    note = "" if args.checkpoint else " (untrained: uninformative; use --checkpoint)"
    print("quality: held-out bpc " + ", ".join(f"{p} {b:.4f}" for p, b in bpc.items()) + note)
    if args.checkpoint is None:
        print("CLI: not timed (it samples from a checkpoint: use --checkpoint)")
    elif not args.no_cli:
        cli_rows(args.checkpoint, [(1, args.cli_chars), (64, args.batch_chars * 4)], args.cli_precision)


if __name__ == "__main__":
    main()
