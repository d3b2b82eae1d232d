"""`chargen train`: build a run from the options given (new, resumed or fine-tuned) and train it
with progress on screen."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from chargen.cli import common
from chargen.cli.common import given, pin_threads
from chargen.config import (
    ADAPTIVE_ABOVE,
    DIST_TIMEOUT,
    ModelConfig,
    TokenizerConfig,
    TrainConfig,
    default,
    format_duration,
)


def train(
    corpus: Annotated[Path, typer.Argument(help="A UTF-8 text file, or a folder of them.")],
    out: Annotated[Path | None, typer.Option(help="Checkpoint path [default: checkpoints/<corpus>.pt].")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run saved at --out.")] = False,
    init_from: Annotated[Path | None, typer.Option(help="Fine-tune: start from this checkpoint's weights.")] = None,
    grow_vocab: Annotated[bool, typer.Option(help="With --init-from: add characters the model lacks.")] = False,
    val_file: Annotated[Path | None, typer.Option(help="Validate on this file instead of the corpus tail.")] = None,
    val_frac: Annotated[
        float | None, typer.Option(help=f"Fraction of the corpus held out [{default(TrainConfig, 'val_frac')}].")
    ] = None,
    val_max_chars: Annotated[
        int | None,
        typer.Option(
            help=f"At most this many characters held out (and of --val-file) [{default(TrainConfig, 'val_max_chars')}]."
        ),
    ] = None,
    eval_chars: Annotated[
        str | None,
        typer.Option(
            help="Characters of the validation tail each evaluation during the run reads: a count, all, "
            "or auto (what takes ~3 s on this machine, chosen at the first start) [auto]; the result reads all."
        ),
    ] = None,
    tokenizer: common.TokenizerKind = None,
    vocab_size: common.VocabSize = None,
    sp_type: Annotated[
        str | None,
        typer.Option(help=f"SentencePiece model: unigram or bpe [{default(TokenizerConfig, 'model_type')}]."),
    ] = None,
    sp_sample_chars: Annotated[
        int | None,
        typer.Option(
            help="SentencePiece trains on this many characters of the corpus "
            f"[{default(TokenizerConfig, 'sample_chars')}]."
        ),
    ] = None,
    cell: Annotated[str | None, typer.Option(help=f"lstm, gru or rnn [{default(ModelConfig, 'cell')}].")] = None,
    layers: common.Layers = None,
    hidden: common.Hidden = None,
    embed: common.Embed = None,
    dropout: common.Dropout = None,
    weight_drop: common.WeightDrop = None,
    tie_weights: Annotated[bool | None, typer.Option(help="Share embedding and output weights.")] = None,
    output: Annotated[
        str | None,
        typer.Option(help=f"Output layer: auto, full or adaptive softmax [auto: adaptive above {ADAPTIVE_ABOVE} ids]."),
    ] = None,
    batch_size: common.BatchSize = None,
    seq_len: common.SeqLen = None,
    lr: common.LearningRate = None,
    weight_decay: Annotated[
        float | None, typer.Option(help=f"AdamW weight decay [{default(TrainConfig, 'weight_decay')}].")
    ] = None,
    warmup: Annotated[int | None, typer.Option(help=f"Warmup steps [{default(TrainConfig, 'warmup_steps')}].")] = None,
    grad_clip: Annotated[
        float | None, typer.Option(help=f"Global gradient-norm clip [{default(TrainConfig, 'grad_clip')}].")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Step budget (0 = none).")] = None,
    max_epochs: Annotated[float | None, typer.Option(help="Epoch budget (0 = none).")] = None,
    max_time: Annotated[str | None, typer.Option(help=common.max_time_help("Time budget"))] = None,
    eval_every: common.EvalEvery = None,
    patience: common.Patience = None,
    seed: common.Seed = None,
    device: common.Device = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    precision: common.Precision = None,
    replace_invalid: common.ReplaceInvalid = False,
    keep_crlf: Annotated[bool, typer.Option(help="Keep CRLF / CR line endings as they are.")] = False,
    allow_binary: common.AllowBinary = False,
    procs: Annotated[
        int | None, typer.Option(help="Train as this many ranks on this machine (torchrun's launcher, gloo).")
    ] = None,
    dist_timeout: Annotated[
        str | None,
        typer.Option(
            help="Under torchrun: how long a rank waits for its peers before failing "
            f"[{format_duration(DIST_TIMEOUT)}]."
        ),
    ] = None,
    quiet: common.Quiet = False,
) -> None:
    """Train a model on CORPUS and save it (best to --out, last beside it as *.last.pt)."""
    if procs is not None:
        from chargen.cli.launch import launch_ranks, without_procs

        raise typer.Exit(launch_ranks(procs, without_procs(sys.argv[1:])))
    pin_threads(threads)
    from chargen.data.corpus import ReadOptions
    from chargen.training.run import TrainRequest

    request = TrainRequest(
        corpus=corpus,
        out=out,
        read=ReadOptions("replace" if replace_invalid else "strict", not keep_crlf, allow_binary),
        model=given(
            cell=cell,
            layers=layers,
            hidden=hidden,
            embed=embed,
            dropout=dropout,
            weight_drop=weight_drop,
            tie_weights=tie_weights,
            output=output,
        ),
        tokenizer=given(kind=tokenizer, vocab_size=vocab_size, model_type=sp_type, sample_chars=sp_sample_chars),
        train=given(
            batch_size=batch_size,
            seq_len=seq_len,
            lr=lr,
            weight_decay=weight_decay,
            warmup_steps=warmup,
            grad_clip=grad_clip,
            max_steps=max_steps,
            max_epochs=max_epochs,
            max_time=common.time_budget(max_time, max_steps, max_epochs),
            eval_every=eval_every,
            patience=patience,
            val_frac=val_frac,
            val_max_chars=val_max_chars,
            eval_chars=parse_eval_chars(eval_chars),
            seed=seed,
            device=device,
            threads=threads,
            precision=precision,
        ),
        val_file=val_file,
        resume=resume,
        init_from=init_from,
        grow_vocab=grow_vocab,
    )
    run_training(request, quiet, group_timeout(dist_timeout))


def parse_eval_chars(text: str | None) -> int | None:
    """--eval-chars as TrainConfig.eval_chars (None: not given)."""
    from chargen.config import EVAL_ALL, EVAL_AUTO
    from chargen.errors import ConfigError

    if text is None:
        return None
    named = {"auto": EVAL_AUTO, "all": EVAL_ALL}
    if text.strip().lower() in named:
        return named[text.strip().lower()]
    try:
        count = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError(f"--eval-chars must be auto, all or a positive count of characters, not {text!r}")
    return count


def group_timeout(text: str | None) -> float | None:
    """--dist-timeout in seconds (None: the default of chargen.training.distributed)."""
    from chargen.config import parse_duration
    from chargen.errors import ConfigError

    if text is None:
        return None
    seconds = parse_duration(text)
    if not seconds > 0:
        raise ConfigError(f"--dist-timeout must be more than 0 (like 90s or 5m), not {text!r}")
    return seconds


def run_training(request: Any, quiet: bool, timeout: float | None = None) -> None:
    """Under torchrun every rank runs this; rank 0 alone speaks."""
    from chargen.cli.progress import TrainingDisplay
    from chargen.training.distributed import World, process_group

    world = World.from_env()
    quiet = quiet or not world.is_main
    device = request.train.get("device") or "auto"
    with process_group(world, device, timeout), TrainingDisplay(quiet=quiet) as display:
        done = _train(request, display, quiet)
    if not quiet:
        print(done)


def _train(request: Any, display: Any, quiet: bool) -> str:
    """The run, and the line that ends it. The trainer (with DDP's hold on the process group) is
    gone when this returns, so the group is torn down with nothing of the run still using it."""
    from chargen.training.run import prepare

    trainer = prepare(request, display)
    if not quiet:
        _describe_run(trainer, display)
    progress = trainer.run()
    part = trainer.eval_part
    read = (
        ""
        if part.per_row is None
        else f" (evaluations during the run, over {part.chars:,} of them: best {progress.best_val_loss:.3f})"
    )
    return (
        f"done: step {progress.step}, val {progress.result_val_loss:.3f} bpc over all {part.all_chars:,} validation "
        f"characters{read}, saved {trainer.best_path} (last: {trainer.last_path})"
    )


def _describe_run(trainer: Any, display: Any) -> None:
    m, c = trainer.model.config, trainer.config
    budget = ", ".join(
        part
        for part in (
            f"{c.max_steps} steps" if c.max_steps else "",
            f"{c.max_epochs:g} epochs" if c.max_epochs else "",
            f"{c.max_time:g}s" if c.max_time else "",
        )
        if part
    )
    precision = "bf16" if trainer.dtype is not None else "fp32"
    display.console.print(
        f"{m.layers}×{m.hidden} {m.cell.upper()} · {trainer.tokenizer.kind} vocab {m.vocab_size} · "
        f"{m.describe_output()} · "
        f"{trainer.model.num_parameters() / 1e6:.2f}M params · {len(trainer.data.train_ids):,} train tokens · "
        f"batch {c.batch_size}×{c.seq_len} · {trainer.device.type} {precision} · budget {budget}"
        + (f" · resuming at step {trainer.progress.step}" if trainer.progress.step else ""),
        highlight=False,
    )
    display.console.print(trainer.validation.describe(), highlight=False)
