"""The `chargen` command. Heavy imports happen inside commands so `--help` is instant."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from chargen import repl_command, sample_command
from chargen.config import parse_duration
from chargen.errors import ChargenError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Character-level text generation: train on your own text, sample, explore in a REPL.",
)


def _given(**options: Any) -> dict[str, Any]:
    return {k: v for k, v in options.items() if v is not None}


def _threads(threads: int | None) -> None:
    """Pin torch's intra-op threads before torch does any work (OMP_NUM_THREADS is honoured too)."""
    from chargen.device import set_threads

    if threads:
        set_threads(threads)
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():
        set_threads(int(os.environ["OMP_NUM_THREADS"]))


@app.command()
def train(
    corpus: Annotated[Path, typer.Argument(help="A UTF-8 text file, or a folder of them.")],
    out: Annotated[Path | None, typer.Option(help="Checkpoint path [default: checkpoints/<corpus>.pt].")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run saved at --out.")] = False,
    init_from: Annotated[Path | None, typer.Option(help="Fine-tune: start from this checkpoint's weights.")] = None,
    grow_vocab: Annotated[bool, typer.Option(help="With --init-from: add characters the model lacks.")] = False,
    val_file: Annotated[Path | None, typer.Option(help="Validate on this file instead of the corpus tail.")] = None,
    val_frac: Annotated[float | None, typer.Option(help="Fraction of the corpus held out [0.1].")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="char or sentencepiece [char].")] = None,
    vocab_size: Annotated[int | None, typer.Option(help="SentencePiece vocabulary size [2000].")] = None,
    sp_type: Annotated[str | None, typer.Option(help="SentencePiece model: unigram or bpe.")] = None,
    cell: Annotated[str | None, typer.Option(help="lstm, gru or rnn [lstm].")] = None,
    layers: Annotated[int | None, typer.Option(help="Recurrent layers [2].")] = None,
    hidden: Annotated[int | None, typer.Option(help="Units per layer [512].")] = None,
    embed: Annotated[int | None, typer.Option(help="Embedding size [0 = auto: min(hidden, 128)].")] = None,
    dropout: Annotated[float | None, typer.Option(help="Dropout between layers.")] = None,
    tie_weights: Annotated[bool | None, typer.Option(help="Share embedding and output weights.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Parallel streams.")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Tokens per backprop window.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay.")] = None,
    warmup: Annotated[int | None, typer.Option(help="Warmup steps.")] = None,
    grad_clip: Annotated[float | None, typer.Option(help="Global gradient-norm clip.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Step budget (0 = none).")] = None,
    max_epochs: Annotated[float | None, typer.Option(help="Epoch budget (0 = none).")] = None,
    max_time: Annotated[str | None, typer.Option(help="Time budget: 90s, 20m, 1.5h [10m]; 0 = none.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Steps between evaluations.")] = None,
    patience: Annotated[int | None, typer.Option(help="Stop after this many evaluations without improvement.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    precision: Annotated[str | None, typer.Option(help="auto, fp32 or bf16.")] = None,
    replace_invalid: Annotated[bool, typer.Option(help="Replace invalid UTF-8 bytes instead of failing.")] = False,
    keep_crlf: Annotated[bool, typer.Option(help="Keep CRLF / CR line endings as they are.")] = False,
    allow_binary: Annotated[bool, typer.Option(help="Read files that look binary.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Train a model on CORPUS and save it (best to --out, last beside it as *.last.pt)."""
    _threads(threads)
    from chargen.corpus import ReadOptions
    from chargen.run import TrainRequest

    request = TrainRequest(
        corpus=corpus,
        out=out,
        read=ReadOptions("replace" if replace_invalid else "strict", not keep_crlf, allow_binary),
        model=_given(cell=cell, layers=layers, hidden=hidden, embed=embed, dropout=dropout, tie_weights=tie_weights),
        tokenizer=_given(kind=tokenizer, vocab_size=vocab_size, model_type=sp_type),
        train=_given(
            batch_size=batch_size,
            seq_len=seq_len,
            lr=lr,
            weight_decay=weight_decay,
            warmup_steps=warmup,
            grad_clip=grad_clip,
            max_steps=max_steps,
            max_epochs=max_epochs,
            max_time=_time_budget(max_time, max_steps, max_epochs),
            eval_every=eval_every,
            patience=patience,
            val_frac=val_frac,
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
    _run_training(request, quiet)


def _run_training(request: Any, quiet: bool) -> None:
    from chargen.progress import TrainingDisplay
    from chargen.run import prepare

    with TrainingDisplay(quiet=quiet) as display:
        trainer = prepare(request, display)
        if not quiet:
            _describe_run(trainer, display)
        progress = trainer.run()
    if not quiet:
        print(
            f"done: step {progress.step}, best val {progress.best_val_bpc:.3f} bpc, "
            f"saved {trainer.best_path} (last: {trainer.last_path})"
        )


def _time_budget(max_time: str | None, max_steps: int | None, max_epochs: float | None) -> float | None:
    """The 10-minute default budget applies only when no other budget is given."""
    if max_time is not None:
        return parse_duration(max_time)
    return 0.0 if (max_steps or max_epochs) else None


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
        f"{trainer.model.num_parameters() / 1e6:.2f}M params · {len(trainer.data.train_ids):,} train tokens · "
        f"batch {c.batch_size}×{c.seq_len} · {trainer.device.type} {precision} · budget {budget}"
        + (f" · resuming at step {trainer.progress.step}" if trainer.progress.step else ""),
        highlight=False,
    )


@app.command("eval")
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="A chargen checkpoint.")],
    text_file: Annotated[Path, typer.Argument(help="A UTF-8 text file to score.")],
    format: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    replace_invalid: Annotated[bool, typer.Option(help="Replace invalid UTF-8 bytes.")] = False,
) -> None:
    """Bits per character of TEXT_FILE under the model (state carried over the whole file)."""
    _threads(threads)
    from chargen.checkpoint import load_model
    from chargen.corpus import ReadOptions, read_corpus
    from chargen.device import select_device
    from chargen.evaluate import bits_per_char, characters_scored

    if format not in ("text", "json"):
        raise ChargenError(f"--format must be text or json, got {format!r}")
    loaded = load_model(checkpoint)
    text = read_corpus(text_file, ReadOptions("replace" if replace_invalid else "strict"))
    ids = loaded.tokenizer.encode(text)
    if len(ids) < 2:
        raise ChargenError(f"{text_file} is too short to score: it needs at least two tokens")
    device = select_device("auto")
    chars = characters_scored(text, loaded.tokenizer.decode(ids[:1]))
    bpc = bits_per_char(loaded.model.to(device), ids, chars, device)
    if format == "json":
        print(
            json.dumps(
                {
                    "checkpoint": str(checkpoint),
                    "file": str(text_file),
                    "bpc": bpc,
                    "characters": chars,
                    "tokens": len(ids),
                }
            )
        )
    else:
        print(f"{bpc:.4f} bpc over {chars:,} characters of {text_file}")


@app.command()
def info(checkpoint: Annotated[Path, typer.Argument(help="A chargen checkpoint.")]) -> None:
    """What a checkpoint holds: model, tokenizer, training, metrics."""
    from rich.console import Console
    from rich.table import Table

    from chargen.checkpoint import load_model

    loaded = load_model(checkpoint)
    p = loaded.payload
    m, metrics, corpus = p["model_config"], p["metrics"], p.get("corpus", {})
    table = Table(title=str(checkpoint), show_header=False)
    rows = [
        (
            "model",
            f"{m['layers']}×{m['hidden']} {m['cell'].upper()}, embed {loaded.model.config.embed_dim}, "
            f"dropout {m['dropout']}, tied {m['tie_weights']}",
        ),
        ("parameters", f"{loaded.model.num_parameters():,}"),
        ("tokenizer", f"{loaded.tokenizer.kind}, vocab {loaded.tokenizer.vocab_size}"),
        ("steps", f"{metrics.get('step')}  (epoch {metrics.get('epoch', 0):.2f})"),
        ("val bpc", _num(metrics.get("val_bpc"))),
        ("best val bpc", _num(metrics.get("best_val_bpc"))),
        ("training time", f"{metrics.get('elapsed', 0):.0f}s"),
        ("corpus", f"{corpus.get('source', '?')} ({corpus.get('chars', 0):,} chars)"),
        ("resumable", "yes" if "resume" in p else "no (best checkpoint; resume uses *.last.pt)"),
        ("format", f"{p['format']} v{p['version']}"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


def _num(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.4f}"


@app.command()
def demo(
    max_time: Annotated[str, typer.Option(help="Training time budget.")] = "3m",
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
) -> None:
    """Train on the built-in corpus (Python's own standard library) and print a sample."""
    _threads(threads)
    from chargen.builtin import write_stdlib_corpus

    corpus = write_stdlib_corpus(Path("corpora") / "stdlib.txt")
    out = Path("checkpoints") / "stdlib.pt"
    print(f"built-in corpus: {corpus} ({corpus.stat().st_size:,} bytes of Python's standard library)")
    from chargen.checkpoint import load_model
    from chargen.config import SampleConfig
    from chargen.run import TrainRequest
    from chargen.sample import Sampler

    _run_training(TrainRequest(corpus=corpus, out=out, train={"max_time": parse_duration(max_time)}), quiet=False)

    loaded = load_model(out)
    text = Sampler(loaded.model, loaded.tokenizer).generate(
        ["def "], SampleConfig(length=600, temperature=0.7, seed=1)
    )[0]
    print(f"\n--- sample from {out} (primed with 'def ') ---\ndef {text}")


# Commands that live in their own modules register here, one line each.
app.command("repl")(repl_command.repl)
app.command("sample")(sample_command.sample)


def main() -> None:
    """Run the app; every user-facing failure becomes one line on stderr and an exit code."""
    try:
        code = app(standalone_mode=False)
    except ChargenError as err:
        _fail(str(err), err.exit_code)
    except typer.Abort:
        _fail("aborted", 130)
    except typer.TyperException as err:
        if type(err).__name__ == "NoArgsIsHelpError":
            print(err.format_message())
            sys.exit(0)
        _fail(" ".join(err.format_message().split()), err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        # The reader (e.g. `head`) went away: stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except OSError as err:
        # The machine failed rather than the input (a disk filled while writing the metrics log, a
        # folder vanished): what and where, in one line.
        where = f": {err.filename}" if err.filename else ""
        _fail(f"{err.strerror or err}{where}", 1)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(code)
