"""Model quality per CPU-minute: validation bits per character after a fixed training time.

    python benchmarks/quality.py                          # chargen defaults, 10 minutes, tinyshakespeare
    python benchmarks/quality.py --budget 3m --reference  # also a plain PyTorch LSTM for the same time
    python benchmarks/quality.py --budget 3m --options "--hidden 640"   # a candidate setting

chargen runs as a user would run it: `chargen train CORPUS --max-time BUDGET` with default
settings, in a subprocess, and its metrics log gives validation bpc over time (over the part of
the validation tail its evaluations read: see `--eval-chars`); the summary is the run's result,
the best model's bpc over the whole tail. Validation is the last 10% of the corpus (300,000
characters at most), read with carried state. With --reference, a plain loop (2×512 nn.LSTM,
AdamW, cosine decay over the budget, no dropout, batch 64, sequence 128, bf16 autocast) trains
for the same wall time and is scored by the same evaluation code.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from chargen.analysis.evaluate import characters_scored, eval_streams, total_bits
from chargen.checkpoint import load_checkpoint
from chargen.config import parse_duration
from chargen.data.corpus import read_corpus, split_validation
from chargen.data.tokenizers import CharTokenizer
from chargen.device import autocast
from chargen.generation.kernels import cpu_model

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "tinyshakespeare.txt"


def run_chargen(
    corpus: Path, budget: str, threads: int, out_dir: Path, options: list[str]
) -> tuple[list[dict], dict[str, float]]:
    """The run's metrics log, and the metrics of its best checkpoint (with the result)."""
    command = [
        sys.executable,
        "-m",
        "chargen",
        "train",
        str(corpus),
        "--max-time",
        budget,
        "--out",
        str(out_dir / "model.pt"),
        "--quiet",
        *options,
    ]
    if threads:
        command += ["--threads", str(threads)]
    subprocess.run(command, check=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    log = [json.loads(line) for line in (out_dir / "model.metrics.jsonl").read_text().splitlines()]
    print(f"chargen peak memory: {peak:.0f} MB (resident, training process)")
    return log, load_checkpoint(out_dir / "model.pt")["metrics"]


def run_reference(corpus: Path, seconds: float, eval_every: float) -> list[dict]:
    """The plain loop; evaluation time is not charged to its budget."""
    from chargen.config import ModelConfig
    from chargen.model import CharLM

    text = read_corpus(corpus)
    train_text, val_text = split_validation(text, 0.1)
    tokenizer = CharTokenizer.train(train_text)
    train_ids, val_ids = tokenizer.encode(train_text), tokenizer.encode(val_text)
    val_streams = eval_streams(val_ids)
    val_chars = characters_scored(tokenizer, val_ids)
    torch.manual_seed(0)
    model = CharLM(ModelConfig(vocab_size=tokenizer.vocab_size, layers=2, hidden=512, dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    batch, seq = 64, 128
    columns = (len(train_ids) - 1) // batch
    inputs = train_ids[: batch * columns].view(batch, columns).long()
    targets = train_ids[1 : batch * columns + 1].view(batch, columns).long()
    cpu = torch.device("cpu")
    log, elapsed, next_eval, offset, state, step = [], 0.0, eval_every, 0, None, 0
    while elapsed < seconds:
        started = time.perf_counter()
        if offset + seq > columns:
            offset, state = 0, None
        for group in optimizer.param_groups:
            group["lr"] = 2e-3 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / seconds))))
        with autocast(cpu, torch.bfloat16):
            logits, state = model(inputs[:, offset : offset + seq], state)
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets[:, offset : offset + seq].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        state, offset, step = tuple(s.detach() for s in state), offset + seq, step + 1
        elapsed += time.perf_counter() - started
        if elapsed >= next_eval or elapsed >= seconds:
            val_bpc = total_bits(model, val_streams, cpu, torch.bfloat16) / val_chars
            log.append(
                {"step": step, "elapsed": elapsed, "val_bpc": val_bpc, "train_bpc": loss.detach().item() / math.log(2)}
            )
            next_eval += eval_every
    return log


def show(name: str, log: list[dict]) -> None:
    print(f"{name}:")
    for record in log:
        print(f"  {record['elapsed']:7.0f}s  step {record['step']:6d}  val {record['val_bpc']:.3f} bpc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="?", type=Path, default=SHAKESPEARE)
    parser.add_argument("--budget", default="10m", help="training time, e.g. 3m, 600s")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = torch's default)")
    parser.add_argument("--reference", action="store_true", help="also train the plain reference loop")
    parser.add_argument("--options", default="", help="more `chargen train` options, as one string")
    args = parser.parse_args()
    if not args.corpus.is_file():
        sys.exit(f"corpus {args.corpus} not found; pass a text file")
    if args.threads:
        torch.set_num_threads(args.threads)
    seconds = parse_duration(args.budget)
    print(f"{cpu_model()}, corpus {args.corpus}, budget {seconds:.0f}s, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        ours, metrics = run_chargen(args.corpus, args.budget, args.threads, Path(tmp), shlex.split(args.options))
    part = f"{metrics['eval_chars']:,} of {metrics['val_chars']:,} validation characters"
    show(f"chargen ({args.options or 'defaults'}; evaluations over {part})", ours)
    best = metrics["result_bpc"]
    summary = f"summary: chargen best val {best:.3f} bpc after {args.budget}"
    if args.reference:
        reference = run_reference(args.corpus, seconds, eval_every=max(seconds / 10, 30))
        show("reference (plain 2×512 LSTM, bf16 autocast, no dropout)", reference)
        ref_best = min(r["val_bpc"] for r in reference)
        summary += f"; reference {ref_best:.3f} bpc ({best - ref_best:+.3f})"
    print(summary)


if __name__ == "__main__":
    main()
