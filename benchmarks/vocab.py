"""Large vocabularies: the full and the adaptive softmax on a CJK corpus, against tinyshakespeare.

    python benchmarks/vocab.py                 # training step, evaluation and sampling; torch's threads
    python benchmarks/vocab.py --threads 1
    python benchmarks/vocab.py --sweep         # where the adaptive softmax starts to pay: step time by vocabulary
    python benchmarks/vocab.py --quality 10m   # validation bpc on songci after equal training time, full vs adaptive
    python benchmarks/vocab.py --quality 10m --layers full   # one of them (a long campaign in parts)

The model is chargen's default (2×512 LSTM, batch 64×64, its default precision), built by the
trainer itself. The reference is the same step on tinyshakespeare (65 characters), where the
output layer costs almost nothing; songci.txt (Song ci, about 6,000 characters) runs with
`--output full` and `--output adaptive`. Training steps run in alternating rounds and each figure
is the median, so a busy neighbour hurts all variants alike. Evaluation is the trainer's own
validation pass over 64k tokens; sampling is the sampler at temperature 0.8 (untrained weights:
speed does not depend on them).

--sweep times the training step on texts drawn character by character from songci's own
character frequencies, cut to the V most frequent ones: the output layer's cost depends only on
the vocabulary and how often each token occurs, so this shows the vocabulary size above which
the adaptive softmax is faster (chargen's `--output auto` threshold).

--quality runs `chargen train songci.txt --max-time BUDGET` as a user would (defaults, in a
subprocess), once with `--output full` and once with `--output adaptive`, and prints the best
validation bpc each reached and how many steps it took.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from chargen.analysis.evaluate import eval_streams, total_bits
from chargen.checkpoint import load_checkpoint
from chargen.config import ADAPTIVE_ABOVE, SampleConfig
from chargen.generation.kernels import cpu_model
from chargen.generation.sampler import Sampler
from chargen.training.run import TrainRequest, prepare
from chargen.training.trainer import Trainer

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"
SHAKESPEARE, SONGCI = CORPORA / "tinyshakespeare.txt", CORPORA / "songci.txt"
BATCH, SEQ = 64, 64
EVAL_TOKENS = 64 * 1024


def trainer_for(corpus: Path, output: str, folder: Path) -> Trainer:
    return prepare(
        TrainRequest(
            corpus=corpus,
            out=folder / f"{corpus.stem}-{output}.pt",
            model={"output": output},
            train={"batch_size": BATCH, "seq_len": SEQ, "max_steps": 10**9, "max_time": 0, "sample_chars": 0},
        )
    )


def median_step_seconds(steps: dict[str, Callable[[], object]], rounds: int, per_round: int) -> dict[str, float]:
    for step in steps.values():  # warm up: oneDNN primitives, the allocator
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(per_round):
                step()
            times[name].append((time.perf_counter() - start) / per_round)
    return {name: statistics.median(t) for name, t in times.items()}


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    run()
    return min(_timed(run) for _ in range(repeats))


def _timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def eval_seconds(trainer: Trainer, repeats: int) -> float:
    """The trainer's validation pass over the first EVAL_TOKENS validation tokens."""
    streams = eval_streams(trainer.data.val_ids[:EVAL_TOKENS])
    return best_seconds(lambda: total_bits(trainer.model, streams, trainer.device, trainer.dtype), repeats)


def sampling_rate(trainer: Trainer, streams: int, length: int, repeats: int) -> float:
    sampler = Sampler(trainer.model, trainer.tokenizer)
    config = SampleConfig(length=length, temperature=0.8, seed=1)
    seconds = best_seconds(lambda: sampler.generate([""] * streams, config), repeats)
    trainer.model.train()
    return streams * length / seconds


def compare(args: argparse.Namespace, folder: Path) -> None:
    trainers = {
        "tinyshakespeare full": trainer_for(SHAKESPEARE, "full", folder),
        "songci full": trainer_for(SONGCI, "full", folder),
        "songci adaptive": trainer_for(SONGCI, "adaptive", folder),
    }
    for name, trainer in trainers.items():
        m = trainer.model.config
        precision = "bf16" if trainer.dtype is not None else "fp32"
        print(
            f"{name:<21} vocab {m.vocab_size:>5} · {m.describe_output()} · "
            f"{trainer.model.num_parameters() / 1e6:.2f}M params · {precision}"
        )
    step = median_step_seconds({n: t.train_step for n, t in trainers.items()}, args.rounds, args.steps)
    reference = step["tinyshakespeare full"]
    print(f"training step, 2×512 LSTM, batch {BATCH}×{SEQ}, median of {args.rounds} rounds × {args.steps} steps:")
    for name, seconds in step.items():
        print(f"  {name:<21} {seconds * 1e3:7.1f} ms/step  ×{seconds / reference:.2f} the tinyshakespeare step")
    print(f"evaluation ({EVAL_TOKENS // 1024}k tokens) and sampling (temperature 0.8), best of {args.repeats}:")
    for name, trainer in trainers.items():
        evaluation = eval_seconds(trainer, args.repeats)
        one = sampling_rate(trainer, 1, args.single_chars, args.repeats)
        many = sampling_rate(trainer, 64, args.batch_chars, args.repeats)
        print(
            f"  {name:<21} eval {evaluation:6.2f} s · sampling 1 stream {one:8,.0f} chars/s · "
            f"64 streams {many:9,.0f} chars/s"
        )
    full, adaptive = step["songci full"], step["songci adaptive"]
    print(
        f"summary: songci step ×{adaptive / reference:.2f} the tinyshakespeare step with the adaptive softmax "
        f"(×{full / reference:.2f} with the full one, {full / adaptive:.2f}x slower) · "
        f"threads {torch.get_num_threads()}"
    )


def sweep(args: argparse.Namespace, folder: Path) -> None:
    counts = Counter(SONGCI.read_text(encoding="utf-8")).most_common()
    generator = torch.Generator().manual_seed(0)
    print(
        f"training step by vocabulary (text drawn from songci's top-V character frequencies), threads "
        f"{torch.get_num_threads()}; --output auto picks adaptive above {ADAPTIVE_ABOVE}:"
    )
    for vocab in args.vocab:
        chars = [c for c, _ in counts[:vocab]]
        weights = torch.tensor([n for _, n in counts[:vocab]], dtype=torch.float64)
        draws = torch.multinomial(weights, args.sweep_chars, replacement=True, generator=generator)
        corpus = folder / f"zipf{vocab}.txt"
        corpus.write_text("".join(chars[i] for i in draws.tolist()), encoding="utf-8")
        steps = {output: trainer_for(corpus, output, folder).train_step for output in ("full", "adaptive")}
        seconds = median_step_seconds(steps, args.rounds, args.steps)
        print(
            f"  V {vocab:>5}: full {seconds['full'] * 1e3:6.1f} ms · adaptive {seconds['adaptive'] * 1e3:6.1f} ms · "
            f"adaptive/full {seconds['adaptive'] / seconds['full']:.2f}"
        )


def quality(args: argparse.Namespace, folder: Path) -> None:
    print(f"songci.txt, chargen defaults, --max-time {args.quality} each:")
    results = {}
    for output in args.layers:
        out = folder / f"songci-{output}.pt"
        command = [sys.executable, "-m", "chargen", "train", str(SONGCI), "--output", output]
        command += ["--max-time", args.quality, "--out", str(out), "--quiet"]
        command += ["--layers", "2", "--hidden", "512"]  # the default shape for both, not one chosen per run
        if args.threads:
            command += ["--threads", str(args.threads)]
        subprocess.run(command, check=True)
        metrics = load_checkpoint(out.with_name(f"{out.stem}.last.pt"))["metrics"]  # result: the best model, whole tail
        results[output] = metrics["result_bpc"]
        print(f"  {output:<8} best val {results[output]:.3f} bpc after {metrics['step']} steps")
    if len(results) == 2:
        print(f"summary: adaptive - full = {results['adaptive'] - results['full']:+.3f} bpc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = torch's default)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of training steps")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant per round")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each evaluation and sampling figure")
    parser.add_argument("--single-chars", type=int, default=1000, help="characters sampled by one stream")
    parser.add_argument("--batch-chars", type=int, default=200, help="characters per stream for 64 streams")
    parser.add_argument("--sweep", action="store_true", help="step time by vocabulary size instead")
    parser.add_argument("--vocab", type=int, nargs="+", default=[256, 512, 1000, 2000, 4000])
    parser.add_argument("--sweep-chars", type=int, default=300_000, help="characters of each sweep text")
    parser.add_argument("--quality", metavar="BUDGET", help="train on songci for BUDGET (e.g. 3m) with each layer")
    parser.add_argument(
        "--layers", nargs="+", choices=["full", "adaptive"], default=["full", "adaptive"], help="--quality: which"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not SONGCI.is_file() or not SHAKESPEARE.is_file():
        raise SystemExit(f"needs {SONGCI} and {SHAKESPEARE}")
    torch.manual_seed(0)
    print(f"CPU: {cpu_model()} · torch {torch.__version__} · threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        mode = quality if args.quality else sweep if args.sweep else compare
        mode(args, Path(tmp))


if __name__ == "__main__":
    main()
