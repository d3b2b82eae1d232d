"""What every command does the same way: take only the options the user gave, pin threads."""

from __future__ import annotations

import os
import sys
from typing import IO, TYPE_CHECKING, Annotated, Any

import typer

from chargen.config import ModelConfig, TokenizerConfig, TrainConfig, default, format_duration, parse_duration

if TYPE_CHECKING:
    from rich.console import Console

# Options `chargen train` and `chargen classify train` share, declared once; the defaults shown
# are read from the config dataclasses that set them.
TokenizerKind = Annotated[str | None, typer.Option(help=f"char or sentencepiece [{default(TokenizerConfig, 'kind')}].")]
VocabSize = Annotated[
    int | None, typer.Option(help=f"SentencePiece vocabulary size [{default(TokenizerConfig, 'vocab_size')}].")
]
Layers = Annotated[int | None, typer.Option(help=f"Recurrent layers [{default(ModelConfig, 'layers')}].")]
Hidden = Annotated[int | None, typer.Option(help=f"Units per layer [{default(ModelConfig, 'hidden')}].")]
Embed = Annotated[
    int | None, typer.Option(help=f"Embedding size [{default(ModelConfig, 'embed')} = auto: min(hidden, 128)].")
]
Dropout = Annotated[float | None, typer.Option(help=f"Dropout between layers [{default(ModelConfig, 'dropout')}].")]
WeightDrop = Annotated[
    float | None,
    typer.Option(
        help=f"Share of the recurrent weights dropped at each training step [{default(ModelConfig, 'weight_drop')}]."
    ),
]
BatchSize = Annotated[int | None, typer.Option(help=f"Parallel streams [{default(TrainConfig, 'batch_size')}].")]
SeqLen = Annotated[int | None, typer.Option(help=f"Tokens per backprop window [{default(TrainConfig, 'seq_len')}].")]
LearningRate = Annotated[float | None, typer.Option(help=f"Peak learning rate [{default(TrainConfig, 'lr')}].")]
EvalEvery = Annotated[
    int | None, typer.Option(help=f"Steps between evaluations [{default(TrainConfig, 'eval_every')}].")
]
Patience = Annotated[
    int | None,
    typer.Option(
        help=f"Stop after this many evaluations without improvement [{default(TrainConfig, 'patience')} = never]."
    ),
]
Seed = Annotated[int | None, typer.Option(help=f"Random seed [{default(TrainConfig, 'seed')}].")]
Precision = Annotated[str | None, typer.Option(help=f"auto, fp32 or bf16 [{default(TrainConfig, 'precision')}].")]
Device = Annotated[str | None, typer.Option(help=f"auto, cpu, cuda or mps [{default(TrainConfig, 'device')}].")]
StepPrecision = Annotated[
    str,
    typer.Option(help="Sampling step: auto, fp32, int8, int8-fbgemm, bf16, int8-fused (auto: fastest measured here)."),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
ReplaceInvalid = Annotated[bool, typer.Option(help="Replace invalid UTF-8 bytes instead of failing.")]
AllowBinary = Annotated[bool, typer.Option(help="Read files that look binary.")]


def given(**options: Any) -> dict[str, Any]:
    """The options the user set (typer gives None for the others), so config defaults apply."""
    return {k: v for k, v in options.items() if v is not None}


def pin_threads(threads: int | None) -> int:
    """Pin torch's intra-op threads before torch does any work: --threads, else OMP_NUM_THREADS,
    else one per CPU this process may use, and never more than those (chargen.threads)."""
    from chargen.device import set_threads
    from chargen.threads import choose_threads

    chosen = choose_threads(threads or 0)
    set_threads(chosen)
    return chosen


def max_time_help(what: str) -> str:
    """--max-time's help, with the default budget of TrainConfig."""
    return f"{what}: 90s, 20m, 1.5h [{format_duration(default(TrainConfig, 'max_time'))}]; 0 = none."


def time_budget(max_time: str | None, max_steps: int | None, max_epochs: float | None) -> float | None:
    """The 10-minute default budget applies only when no other budget is given."""
    if max_time is not None:
        return parse_duration(max_time)
    return 0.0 if (max_steps or max_epochs) else None


def plain_output() -> bool:
    """NO_COLOR (https://no-color.org: any non-empty value) asks for text without colour or styles."""
    return bool(os.environ.get("NO_COLOR"))


def console(file: IO[str] | None = None, soft_wrap: bool = False) -> Console:
    """Every command's rich console. Styles only on a terminal and without NO_COLOR: rich alone
    would keep bold and dim under NO_COLOR, and an escape code in a pipe is noise."""
    from rich.console import Console

    file = file or sys.stdout
    styled = not plain_output() and file.isatty()
    return Console(file=file, color_system="auto" if styled else None, highlight=False, soft_wrap=soft_wrap)
