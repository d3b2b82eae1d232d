"""Training throughput: chargen's training step against plain PyTorch loops, in the same process.

    python benchmarks/throughput.py                 # torch's default threads, batch 64×128
    python benchmarks/throughput.py --seq 64        # the default training shape (batch 64×64)
    python benchmarks/throughput.py --threads 1 --rounds 5

A 2×512 LSTM, batch 64 streams × a 128-token window unless --batch/--seq say otherwise (the
default stays 64×128 so the journal's figures compare; `chargen train` defaults to 64×64), the
tinyshakespeare character vocabulary (../shared/corpora, else a built-in text repeated). The references are what a plain
training loop does: nn.Embedding(V, 512) -> nn.LSTM -> nn.Linear, AdamW, gradient clipping, the
hidden state carried and detached; once in fp32 and once under torch.autocast("cpu",
torch.bfloat16). chargen runs its own training step with its default settings (embedding size,
dropout, precision) at the same layers, hidden size, batch and window. Where torch cannot run a
bf16 LSTM (oneDNN below AVX512-BF16, e.g. an AVX2-only CPU) the bf16 reference is left out and
the ratios are against fp32.
Variants run in alternating rounds and each figure is the median, so a busy neighbour process
hurts all of them alike. FLOP/s are counted exactly (forward matmuls ×3 for forward + backward)
and compared with a bf16 and an fp32 matmul peak measured in the same run.
Every variant runs with freed memory kept for reuse, as the `chargen` command runs
(chargen.allocator); --system-malloc leaves glibc's default, which returns large blocks to the OS
and faults them in again each step.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from chargen.allocator import retain_freed_memory
from chargen.generation.kernels import cpu_model

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"
HIDDEN, LAYERS = 512, 2


def corpus_text() -> str:
    if SHAKESPEARE.is_file():
        return SHAKESPEARE.read_text(encoding="utf-8")
    return "First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 4000


def matmul_peak(dtype: torch.dtype, repeats: int = 5) -> float:
    """The best FLOP/s of square matmuls of a few sizes: what this CPU can do at all."""
    rates = []
    for size in (1024, 2048, 4096):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        a @ b
        rates.append(2 * size**3 / min(_timed(lambda a=a, b=b: a @ b) for _ in range(repeats)))
    return max(rates)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Reference(nn.Module):
    def __init__(self, vocab: int, embed: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, HIDDEN, LAYERS, batch_first=True)
        self.head = nn.Linear(HIDDEN, vocab)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None) -> tuple[torch.Tensor, tuple]:
        out, state = self.lstm(self.embed(x), state)
        return self.head(out), state


def reference_step(ids: torch.Tensor, vocab: int, embed: int, bf16: bool, batch: int, seq: int) -> Callable[[], None]:
    """A plain TBPTT step over contiguous streams, the way most char-rnn ports write it."""
    model = Reference(vocab, embed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    columns = (len(ids) - 1) // batch
    inputs = ids[: batch * columns].view(batch, columns).long()
    targets = ids[1 : batch * columns + 1].view(batch, columns).long()
    position = {"offset": 0, "state": None}

    def step() -> None:
        start = position["offset"]
        if start + seq > columns:
            start, position["state"] = 0, None
        x, y = inputs[:, start : start + seq], targets[:, start : start + seq]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, state = model(x, position["state"])
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        position["offset"], position["state"] = start + seq, tuple(s.detach() for s in state)

    return step


def chargen_step(corpus: Path, out: Path, embed: int, batch: int, seq: int) -> tuple[Callable[[], None], str]:
    from chargen.training.run import TrainRequest, prepare

    trainer = prepare(
        TrainRequest(
            corpus=corpus,
            out=out,
            model={"layers": LAYERS, "hidden": HIDDEN, "embed": embed},
            train={"batch_size": batch, "seq_len": seq, "max_steps": 10**9, "max_time": 0},
        )
    )
    precision = "bf16" if trainer.dtype is not None else "fp32"
    return trainer.train_step, precision


def flops_per_char(vocab: int, embed: int) -> float:
    forward = sum(2 * 4 * HIDDEN * ((embed if layer == 0 else HIDDEN) + HIDDEN) for layer in range(LAYERS))
    forward += 2 * HIDDEN * vocab
    return 3 * forward  # backward costs about twice the forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = torch's default)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
    parser.add_argument("--batch", type=int, default=64, help="streams per step")
    parser.add_argument("--seq", type=int, default=128, help="tokens per stream per step (the window)")
    parser.add_argument("--embed", type=int, default=0, help="chargen's embedding size (0 = its default)")
    parser.add_argument("--system-malloc", action="store_true", help="glibc's default allocator behaviour")
    args = parser.parse_args()
    retained = not args.system_malloc and retain_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from chargen.config import ModelConfig
    from chargen.data.tokenizers import CharTokenizer

    text = corpus_text()
    tokenizer = CharTokenizer.train(text)
    ids = tokenizer.encode(text)
    embed = args.embed or ModelConfig(vocab_size=tokenizer.vocab_size, hidden=HIDDEN).embed_dim
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(text, encoding="utf-8")
        ours, precision = chargen_step(corpus, Path(tmp) / "bench.pt", embed, args.batch, args.seq)
        shape = {"batch": args.batch, "seq": args.seq}
        variants = {
            "reference fp32": reference_step(ids, tokenizer.vocab_size, HIDDEN, bf16=False, **shape),
            "reference bf16 autocast": reference_step(ids, tokenizer.vocab_size, HIDDEN, bf16=True, **shape),
            f"chargen ({precision})": ours,
        }
        for name, step in list(variants.items()):  # warm up: oneDNN primitives, allocator
            try:
                step()
            except RuntimeError as error:  # oneDNN without bf16: "could not create a primitive descriptor"
                print(f"{name}: cannot run here ({str(error).splitlines()[0][:80]})")
                del variants[name]
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, step in variants.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                times[name].append((time.perf_counter() - start) / args.steps)

    bf16 = "reference bf16 autocast" in variants
    peak_fp32 = matmul_peak(torch.float32)
    peak_bf16 = matmul_peak(torch.bfloat16) if bf16 else math.nan  # slow emulated where bf16 cannot run
    chars_per_step = args.batch * args.seq
    print(
        f"2×{HIDDEN} LSTM, embed {HIDDEN} (references) / {embed} (chargen), vocab {tokenizer.vocab_size}, "
        f"batch {args.batch}×{args.seq}, "
        f"threads {torch.get_num_threads()}, {args.rounds} rounds × {args.steps} steps"
    )
    print(f"{cpu_model()} · malloc: {'freed memory retained (as chargen)' if retained else 'glibc default'}")
    print(
        f"matmul peak (best of 1024³-4096³): bf16 {peak_bf16 / 1e12:.2f} TFLOP/s, fp32 {peak_fp32 / 1e12:.2f} TFLOP/s"
    )
    speed = {name: chars_per_step / statistics.median(t) for name, t in times.items()}
    against = "bf16 autocast" if bf16 else "fp32"
    reference = speed[f"reference {against}"]
    for name, chars in speed.items():
        tflops = chars * flops_per_char(tokenizer.vocab_size, embed if name.startswith("chargen") else HIDDEN) / 1e12
        peak = peak_bf16 if "fp32" not in name else peak_fp32
        print(
            f"  {name:<26} {statistics.median(times[name]) * 1e3:7.1f} ms/step  {chars:9,.0f} chars/s  "
            f"×{chars / reference:4.2f} vs {against} reference  "
            f"{tflops:.3f} TFLOP/s ({tflops * 1e12 / peak:.0%} of peak)"
        )
    ours, fp32 = speed[f"chargen ({precision})"], speed["reference fp32"]
    versus_bf16 = f"×{ours / reference:.2f} the bf16-autocast reference ({reference:,.0f}) and " if bf16 else ""
    print(
        f"summary: batch {args.batch}×{args.seq}: chargen {ours:,.0f} chars/s = {versus_bf16}"
        f"×{ours / fp32:.2f} fp32 ({fp32:,.0f}), threads {torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
