"""Sampling speed: chargen's sampler against the plain reference loop, in the same process.

    python benchmarks/sampling.py                        # untrained 2×512 LSTM, torch's threads
    python benchmarks/sampling.py --threads 1
    python benchmarks/sampling.py --checkpoint ckpt.pt   # a trained model: the quality line means something

The model is a 2×512 LSTM over the tinyshakespeare characters (../shared/corpora, else a built-in
text), untrained unless --checkpoint is given: speed does not depend on the weights. The
reference is what a plain sampling loop does: the model's forward (nn.LSTM) over one token,
softmax, multinomial, per step; it runs with oneDNN on and off (torch's CPU LSTM uses oneDNN by
default) and the faster counts. Each figure is the best of --repeats runs, since other processes
share the machine. The quality line gives bits per character of held-out text read through
chargen's fp32 and int8 steps.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from chargen.checkpoint import load_model
from chargen.config import ModelConfig, SampleConfig
from chargen.data.tokenizers import CharTokenizer
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--checkpoint", type=Path, help="benchmark this model instead of an untrained 2×512")
    parser.add_argument("--single-chars", type=int, default=2000, help="characters for the single stream")
    parser.add_argument("--batch-chars", type=int, default=300, help="characters per stream for 64 streams")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    text = SHAKESPEARE.read_text(encoding="utf-8") if SHAKESPEARE.is_file() else BUILTIN * 200
    model, tokenizer, source = build_model(args.checkpoint, text)
    m = model.config
    print(
        f"{m.layers}×{m.hidden} {m.cell.upper()} · vocab {m.vocab_size} · {source} · torch {torch.__version__} · "
        f"threads {torch.get_num_threads()} · temperature {TEMPERATURE}, no top-k"
    )
    samplers = {precision: Sampler(model, tokenizer, precision=precision) for precision in ("int8", "fp32")}

    results = {}
    for streams, length in ((1, args.single_chars), (64, args.batch_chars)):
        reference = {  # a quarter of the length: the reference is slow, and its rate is steady
            mkldnn: chars_per_second(
                lambda b, n, mkldnn=mkldnn: reference_loop(model, b, n, mkldnn), streams, length // 4, args.repeats
            )
            for mkldnn in (True, False)
        }
        best_reference = max(reference.values())
        row = [f"{streams:>2} stream{'s' if streams > 1 else ' '}", f"reference {best_reference:>9,.0f} chars/s"]
        for precision, sampler in samplers.items():

            def generate(b: int, n: int, sampler: Sampler = sampler) -> object:
                return sampler.generate([""] * b, SampleConfig(length=n, temperature=TEMPERATURE, seed=1))

            speed = chars_per_second(generate, streams, length, args.repeats)
            results[streams, precision] = (speed, speed / best_reference)
            row.append(f"chargen {precision} {speed:>9,.0f} chars/s ({speed / best_reference:.1f}x)")
        print(" · ".join(row) + f"   [reference with oneDNN {reference[True]:,.0f}, without {reference[False]:,.0f}]")

    held_out = text[-20000:]
    bpc = {precision: held_out_bpc(sampler, held_out) for precision, sampler in samplers.items()}
    note = "" if args.checkpoint else " (untrained: uninformative; use --checkpoint)"
    print(f"quality: held-out bpc fp32 {bpc['fp32']:.4f}, int8 {bpc['int8']:.4f}{note}")

    single, batch = results[1, "int8"], results[64, "int8"]
    print(
        f"summary: 1 stream {single[0] / 1e3:.1f}k chars/s ({single[1]:.1f}x reference) · "
        f"64 streams {batch[0] / 1e3:.0f}k chars/s ({batch[1]:.1f}x) · int8 · threads {torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
