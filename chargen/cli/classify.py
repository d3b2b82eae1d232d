"""`chargen classify train|eval|predict`: text classifiers built on character language models.

Nothing heavy is imported at module level: chargen.cli.app registers this sub-app, and `--help`
stays instant.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from chargen.cli import common
from chargen.cli.common import given, pin_threads
from chargen.config import ClassifierConfig, default
from chargen.errors import ChargenError, ConfigError

if TYPE_CHECKING:
    from chargen.classify.api import Prediction
    from chargen.classify.metrics import Report
    from chargen.data.corpus import ReadOptions

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Classify text (spam, sentiment, author, language) with character-level LSTMs.",
)

DataFormat = Annotated[str, typer.Option(help="auto, folders, files, tsv or jsonl.")]
Threads = Annotated[int | None, typer.Option(help="CPU threads.")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")]


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Labelled examples: a folder or a .tsv / .jsonl file.")],
    out: Annotated[Path | None, typer.Option(help="Classifier path [default: checkpoints/<data>.clf].")] = None,
    method: Annotated[
        str | None,
        typer.Option(help=f"ensemble, ngram, discriminative or generative [{default(ClassifierConfig, 'method')}]."),
    ] = None,
    ngram_max: Annotated[
        int | None,
        typer.Option(help=f"ngram and ensemble: longest character n-gram [{default(ClassifierConfig, 'ngram_max')}]."),
    ] = None,
    data_format: DataFormat = "auto",
    test_frac: Annotated[
        float | None,
        typer.Option(
            help=f"Hold out this fraction of each class for a test [{default(ClassifierConfig, 'test_frac')}]."
        ),
    ] = None,
    val_frac: Annotated[
        float | None,
        typer.Option(help=f"Fraction of each class for validation [{default(ClassifierConfig, 'val_frac')}]."),
    ] = None,
    init_from: Annotated[Path | None, typer.Option(help="Start from this chargen checkpoint's model.")] = None,
    pretrain_on: Annotated[
        Path | None, typer.Option(help="Unlabelled text (file or folder) for the base language model.")
    ] = None,
    pretrain_frac: Annotated[
        float | None,
        typer.Option(help=f"Share of the time for the base model [{default(ClassifierConfig, 'pretrain_frac')}]."),
    ] = None,
    finetune_lr: Annotated[
        float | None,
        typer.Option(help=f"Learning rate after the base model [{default(ClassifierConfig, 'finetune_lr')}]."),
    ] = None,
    examples_per_batch: Annotated[
        int | None, typer.Option(help=f"Discriminative: examples per step [{default(ClassifierConfig, 'batch_size')}].")
    ] = None,
    max_len: Annotated[
        int | None, typer.Option(help=f"Discriminative: tokens read per text [{default(ClassifierConfig, 'max_len')}].")
    ] = None,
    pooling: Annotated[
        str | None,
        typer.Option(
            help=f"Discriminative head reads: last, mean, max or all [{default(ClassifierConfig, 'pooling')}]."
        ),
    ] = None,
    class_weights: Annotated[bool | None, typer.Option(help="Discriminative: weight classes equally.")] = None,
    tokenizer: common.TokenizerKind = None,
    vocab_size: common.VocabSize = None,
    layers: common.Layers = None,
    hidden: common.Hidden = None,
    embed: common.Embed = None,
    dropout: common.Dropout = None,
    weight_drop: common.WeightDrop = None,
    batch_size: common.BatchSize = None,
    seq_len: common.SeqLen = None,
    lr: common.LearningRate = None,
    max_steps: Annotated[int | None, typer.Option(help="Step budget of each phase (0 = none).")] = None,
    max_epochs: Annotated[float | None, typer.Option(help="Epoch budget of each phase (0 = none).")] = None,
    max_time: Annotated[str | None, typer.Option(help=common.max_time_help("Time budget of the whole run"))] = None,
    eval_every: common.EvalEvery = None,
    patience: common.Patience = None,
    seed: common.Seed = None,
    device: common.Device = None,
    threads: Threads = None,
    precision: common.Precision = None,
    replace_invalid: common.ReplaceInvalid = False,
    allow_binary: common.AllowBinary = False,
    quiet: common.Quiet = False,
) -> None:
    """Train a classifier on DATA: a character n-gram linear model (ngram, seconds); a base
    language model, then one model per class (generative) or a classification head
    (discriminative); or the n-gram model and the discriminative LSTM combined (ensemble). More
    unlabelled text of the same kind (--pretrain-on) or a trained model (--init-from) makes the
    LSTM better. Prints validation (and test) figures."""
    pin_threads(threads)
    from chargen.classify.fit import ClassifyRequest, fit
    from chargen.cli.progress import ClassifierDisplay

    request = ClassifyRequest(
        data=data,
        out=out,
        data_format=data_format,
        read=_read_options(replace_invalid, allow_binary),
        classifier=given(
            method=method,
            ngram_max=ngram_max,
            pretrain_frac=pretrain_frac,
            finetune_lr=finetune_lr,
            batch_size=examples_per_batch,
            max_len=max_len,
            pooling=pooling,
            class_weights=class_weights,
            val_frac=val_frac,
            test_frac=test_frac,
        ),
        model=given(layers=layers, hidden=hidden, embed=embed, dropout=dropout, weight_drop=weight_drop),
        tokenizer=given(kind=tokenizer, vocab_size=vocab_size),
        train=given(
            batch_size=batch_size,
            seq_len=seq_len,
            lr=lr,
            max_steps=max_steps,
            max_epochs=max_epochs,
            max_time=common.time_budget(max_time, max_steps, max_epochs),
            eval_every=eval_every,
            patience=patience,
            seed=seed,
            device=device,
            threads=threads,
            precision=precision,
        ),
        init_from=init_from,
        pretrain_on=pretrain_on,
    )
    with ClassifierDisplay(quiet=quiet) as display:
        fitted = fit(request, display)
    if quiet:
        return

    console = common.console()
    held_out = [("validation", fitted.validation)] + ([("test", fitted.test)] if fitted.test else [])
    for name, scored in held_out:
        console.print(f"{name}: {_figures(scored)}", highlight=False)
        for part, part_scored in scored.parts.items():
            console.print(f"  {part} alone: {_figures(part_scored)}", highlight=False)
    console.print(f"done in {fitted.seconds:.0f}s: saved {fitted.path}", highlight=False)


@app.command("eval")
def evaluate(
    classifier: Annotated[Path, typer.Argument(help="A classifier file from `chargen classify train`.")],
    data: Annotated[Path, typer.Argument(help="Labelled examples: a folder or a .tsv / .jsonl file.")],
    data_format: DataFormat = "auto",
    format: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
    device: Device = "auto",
    threads: Threads = None,
    replace_invalid: common.ReplaceInvalid = False,
    allow_binary: common.AllowBinary = False,
) -> None:
    """Accuracy, macro-F1, per-class precision and recall, and the confusion matrix on DATA. On
    the data the classifier was trained on, only its held-out test examples are scored."""
    if format not in ("text", "json"):
        raise ConfigError(f"--format must be text or json, got {format!r}")
    pin_threads(threads)
    from chargen.classify.api import load_classifier
    from chargen.data.labelled import fingerprint, read_examples, split_examples

    model = load_classifier(classifier, device=device)
    examples = read_examples(data, data_format, _read_options(replace_invalid, allow_binary))
    subset, note, trained_on = "all", "", model.payload["data"]
    if fingerprint(examples) == trained_on.get("fingerprint") and isinstance(trained_on.get("seed"), int):
        settings = model.loaded.config
        if settings.test_frac:
            split = split_examples(examples, settings.test_frac, settings.val_frac, trained_on["seed"])
            examples, subset = split.test or examples, "test"
            note = f"the {len(examples):,} test examples held out when the classifier was trained"
        else:
            subset, note = "training", "the examples it was trained on (train with --test-frac to hold some out)"
    scored = model.evaluate(examples)
    if format == "json":
        print(json.dumps({"classifier": str(classifier), "data": str(data), "subset": subset, **scored.to_dict()}))
        return
    _print_report(scored, f"{data}: {note}" if note else str(data))


@app.command()
def predict(
    classifier: Annotated[Path, typer.Argument(help="A classifier file from `chargen classify train`.")],
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.")] = None,
    file: Annotated[str | None, typer.Option(help="Texts to classify, one per line; - reads standard input.")] = None,
    format: Annotated[str, typer.Option("--format", help="text or jsonl.")] = "text",
    device: Device = "auto",
    threads: Threads = None,
    replace_invalid: common.ReplaceInvalid = False,
) -> None:
    """The label of each text, with the probability of every label (and, for a generative
    classifier, the bits per character under each label's model)."""
    if format not in ("text", "jsonl"):
        raise ConfigError(f"--format must be text or jsonl, got {format!r}")
    if bool(texts) == (file is not None):
        raise ConfigError("give texts to classify, or --file FILE (- for standard input), not both")
    pin_threads(threads)
    from chargen.classify.api import load_classifier

    model = load_classifier(classifier, device=device)
    lines = texts or _read_lines(file or "-", replace_invalid)
    for start in range(0, len(lines), 256):  # results appear as they are ready, for pipelines
        batch = lines[start : start + 256]
        for text, prediction in zip(batch, model.predict(batch)):
            if format == "jsonl":
                sys.stdout.write(json.dumps({"text": text, **prediction.to_dict()}, ensure_ascii=False) + "\n")
            else:
                sys.stdout.write(_prediction_line(text, prediction) + "\n")
        sys.stdout.flush()


def _read_options(replace_invalid: bool, allow_binary: bool) -> ReadOptions:
    from chargen.data.corpus import ReadOptions

    return ReadOptions("replace" if replace_invalid else "strict", allow_binary=allow_binary)


def _read_lines(file: str, replace_invalid: bool) -> list[str]:
    """The lines of a file or of standard input, decoded by the corpus reader's rules."""
    from chargen.data.corpus import decode

    name = "standard input" if file == "-" else file
    try:
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as err:
        raise ChargenError(f"cannot read {name}: {err.strerror or err}") from None
    text = decode(data, name, _read_options(replace_invalid, False))
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines if text else []


def _prediction_line(text: str, prediction: Prediction) -> str:
    ranked = sorted(prediction.probabilities.items(), key=lambda item: -item[1])
    probabilities = "  ".join(f"{label} {p:.3f}" for label, p in ranked)
    bpc = ""
    if prediction.bpc is not None:
        bpc = "  bpc " + " ".join(f"{label} {prediction.bpc[label]:.2f}" for label, _ in ranked)
    shown = text if len(text) <= 60 else text[:57] + "..."
    return f"{prediction.label}\t{probabilities}{bpc}\t{json.dumps(shown, ensure_ascii=False)}"


def _figures(scored: Report) -> str:
    return f"accuracy {scored.accuracy:.2%}  macro-F1 {scored.macro_f1:.4f}  ({scored.total:,} examples)"


def _print_report(scored: Report, title: str) -> None:

    from rich.table import Table

    console = common.console()
    console.print(title, highlight=False)
    console.print(_figures(scored), highlight=False)
    for part, part_scored in scored.parts.items():
        console.print(f"  {part} alone: {_figures(part_scored)}", highlight=False)
    per_class = Table("label", "precision", "recall", "F1", "examples")
    for row in zip(scored.labels, scored.precision, scored.recall, scored.f1, scored.support):
        per_class.add_row(row[0], f"{row[1]:.4f}", f"{row[2]:.4f}", f"{row[3]:.4f}", f"{row[4]:,}")
    console.print(per_class)
    confusion = Table("true \\ predicted", *scored.labels, title="confusion matrix")
    for label, counts in zip(scored.labels, scored.confusion):
        confusion.add_row(label, *(f"{n:,}" for n in counts))
    console.print(confusion)
