"""Assemble a training run from what the user asked for: a new run, a resume, or a fine-tune."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from chargen.analysis.evaluate import characters_scored
from chargen.checkpoint import build_model, load_checkpoint, remove_stale_temps
from chargen.config import ModelConfig, TokenizerConfig, TrainConfig, from_dict, resolve_output
from chargen.data.batches import Dataset
from chargen.data.corpus import ReadOptions, open_corpus
from chargen.data.scan import CorpusFacts, Split
from chargen.data.tokenized import Wanted, token_counts, tokenize
from chargen.data.tokenizers import CharTokenizer, Tokenizer
from chargen.device import select_device, select_precision
from chargen.errors import CheckpointError, ConfigError, CorpusError
from chargen.model import CharLM
from chargen.output import adaptive_cutoffs
from chargen.training.distributed import World
from chargen.training.events import Callbacks, WorkEvent
from chargen.training.trainer import Trainer, last_checkpoint_path

# Options a resumed run may change; anything else would make it a different run.
RESUMABLE = {"max_steps", "max_epochs", "max_time", "eval_every", "patience", "device", "threads", "sample_chars"}


@dataclass
class TrainRequest:
    corpus: Path
    out: Path | None = None
    read: ReadOptions = field(default_factory=ReadOptions)
    model: dict[str, Any] = field(default_factory=dict)  # only the options the user gave
    tokenizer: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    val_file: Path | None = None
    resume: bool = False
    init_from: Path | None = None
    grow_vocab: bool = False


def default_out(corpus: Path) -> Path:
    name = corpus.resolve().name
    stem = Path(name).stem if corpus.is_file() else name
    return Path("checkpoints") / f"{stem or 'model'}.pt"


def check_writable(path: Path) -> None:
    """Fail before training, not after an hour of it. Probe the nearest folder that exists and
    create nothing, so a run that fails early leaves no empty folder behind (the first save makes it)."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".chargen-probe-"):
            pass
    except OSError as err:
        raise ConfigError(f"cannot write to {path.parent}: {err.strerror or err}; choose another --out") from None
    if path.is_dir():
        raise ConfigError(f"--out {path} is a folder; give a file name such as {path / 'model.pt'}")


def prepare(request: TrainRequest, callbacks: Callbacks | None = None, world: World | None = None) -> Trainer:
    """A trainer for this process; under torchrun, for this rank of `world`. A group that torchrun
    restarted after a failure continues from its last checkpoint, as --resume would."""
    callbacks = callbacks or Callbacks()
    world = world or World.from_env()
    out = request.out or default_out(request.corpus)
    check_writable(out)
    if world.restarted and last_checkpoint_path(out).exists():
        request = dataclasses.replace(request, resume=True)
    corpus = open_corpus(request.corpus, request.read)
    resume_payload = _load_resumable(last_checkpoint_path(out)) if request.resume else None
    if resume_payload is not None:
        train_config = _resumed_config(resume_payload, request)
        loaded = build_model(resume_payload, last_checkpoint_path(out))
        model: CharLM | None = loaded.model
        wanted: Wanted = lambda facts: loaded.tokenizer  # noqa: E731
    elif request.init_from is not None:
        train_config = TrainConfig(**request.train)
        torch.manual_seed(train_config.seed)
        model, base = fine_tune_start(request.init_from, request.model, request.tokenizer)
        wanted = lambda facts: fine_tune_vocabulary(base, facts.chars_seen, request.grow_vocab)  # noqa: E731
    else:
        train_config = TrainConfig(**request.train)
        model, wanted = None, TokenizerConfig(**request.tokenizer)

    split = Split("none") if request.val_file else Split("tail", train_config.val_frac, train_config.val_max_chars)
    check = _corpus_check(resume_payload, train_config, request.val_file is not None)
    report = _reporter(callbacks)
    tokens = tokenize(corpus, split, wanted, check, callbacks.on_message, report)
    tokenizer = tokens.tokenizer
    if request.init_from is not None and resume_payload is None:  # a resumed fine-tune has its vocabulary
        model = adopt_vocabulary(model, base, tokenizer, callbacks)

    if request.val_file is not None:
        held_out = Split("head", max_chars=train_config.val_max_chars)
        val = tokenize(
            open_corpus(request.val_file, request.read),
            held_out,
            lambda facts: tokenizer,
            None,
            callbacks.on_message,
            report,
        )
        train_ids, val_ids = tokens.ids, val.before_cut
    else:
        train_ids, val_ids = tokens.before_cut, tokens.after_cut
    if model is None:
        torch.manual_seed(train_config.seed)  # the model's initial weights follow --seed
        model = _new_model(request.model, tokenizer.vocab_size, train_ids)
    train_config = fit_batch(train_config, train_ids, val_ids, tokens.facts.cut, callbacks)
    info = {
        "source": str(request.corpus),
        "sha256": tokens.facts.sha256,
        "chars": tokens.facts.chars,
        "val_source": str(request.val_file) if request.val_file else "tail",
    }
    data = Dataset(train_ids, val_ids, tokens.facts.cut, characters_scored(tokenizer, val_ids), info)
    device = world.device(select_device(train_config.device))
    dtype = select_precision(train_config.precision, device)
    for path in (out, last_checkpoint_path(out)):  # left by a run killed in the middle of a save
        remove_stale_temps(path)
    if resume_payload is None:
        return Trainer(model, tokenizer, data, train_config, out, device, dtype, callbacks, world=world)
    source = last_checkpoint_path(out)
    try:
        trainer = Trainer(model, tokenizer, data, train_config, out, device, dtype, callbacks, resume_payload, world)
    except (ValueError, KeyError, RuntimeError) as err:  # optimizer.load_state_dict, set_rng_state
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{source}: its training state cannot be restored ({reason})") from None
    _check_training_state(trainer, source)
    return trainer


def _new_model(options: dict[str, Any], vocab_size: int, train_ids: torch.Tensor) -> CharLM:
    """A fresh model; `--output auto` becomes the full or the adaptive softmax here, the
    adaptive one ranked by the training text's token frequencies."""
    options = dict(options)
    tie_weights = options.get("tie_weights", False)
    output = resolve_output(options.pop("output", "auto"), vocab_size, tie_weights)
    if output == "full":
        return CharLM(ModelConfig(vocab_size=vocab_size, output="full", **options))
    counts = torch.from_numpy(token_counts(train_ids, vocab_size))
    config = ModelConfig(vocab_size=vocab_size, output="adaptive", cutoffs=adaptive_cutoffs(counts), **options)
    model = CharLM(config)
    model.head.set_frequencies(counts)
    return model


def _corpus_check(
    resume_payload: dict[str, Any] | None, config: TrainConfig, val_file: bool
) -> Callable[[CorpusFacts], None]:
    """Refuse, before any tokenizer is trained: a resumed run's corpus that has changed, a corpus
    too small to hold a validation split."""

    def check(facts: CorpusFacts) -> None:
        if resume_payload is not None and resume_payload.get("corpus", {}).get("sha256") != facts.sha256:
            raise ConfigError(
                "the corpus has changed since this run started; resume needs the same text "
                "(start a new run with another --out, or fine-tune with --init-from)"
            )
        if facts.cut < 2 or (not val_file and facts.chars - facts.cut < 2):
            raise _too_small(facts.cut, config.seq_len, config.val_frac, chars_per_token=1.0)

    return check


def _reporter(callbacks: Callbacks) -> Callable[[str, int, int], None]:
    return lambda task, done, total: callbacks.on_work(WorkEvent(task, done, total))


def _check_training_state(trainer: Trainer, source: Path) -> None:
    """The saved hidden state and optimizer moments must fit the model, or the first step of the
    resumed run would fail with a bare shape error."""
    expected = [s.shape for s in trainer.model.initial_state(trainer.local_batch)]
    if trainer.state is not None and [s.shape for s in trainer.state] != expected:
        raise CheckpointError(f"{source}: the saved hidden state does not fit the model and batch size")
    for group in trainer.optimizer.param_groups:
        for weight in group["params"]:
            moments = trainer.optimizer.state.get(weight, {}).values()
            if any(isinstance(m, torch.Tensor) and m.dim() and m.shape != weight.shape for m in moments):
                raise CheckpointError(f"{source}: the saved optimizer state does not fit the model's weights")


def _flag(option: str) -> str:
    """The command-line flag a config field comes from."""
    return {
        "kind": "--tokenizer",
        "model_type": "--sp-type",
        "sample_chars": "--sp-sample-chars",
        "warmup_steps": "--warmup",
    }.get(option, "--" + option.replace("_", "-"))


def _load_resumable(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise CheckpointError(
            f"nothing to resume: {path} does not exist (train without --resume first, or give the run's --out)"
        )
    payload = load_checkpoint(path)
    if "resume" not in payload:
        raise CheckpointError(f"{path} holds no training state to resume")
    return payload


def _resumed_config(payload: dict[str, Any], request: TrainRequest) -> TrainConfig:
    """The run's own settings, with only budgets and run-time options taken from the request.
    (The corpus is compared once it has been read: see _corpus_check.)"""
    old_train = payload.get("train_config", {})
    old_model = payload["model_config"]
    for given, old in ((request.model, old_model), (request.train, old_train)):
        for key, value in given.items():
            if key not in RESUMABLE and old.get(key) != value:
                raise ConfigError(
                    f"{_flag(key)} {value} differs from the resumed run's {old.get(key)}; a resumed run keeps "
                    "its shape (drop the option, or start a new run with another --out)"
                )
    tokenizer_kind = payload["tokenizer"].get("kind")
    if request.tokenizer and request.tokenizer.get("kind", tokenizer_kind) != tokenizer_kind:
        raise ConfigError(f"the resumed run uses the {tokenizer_kind} tokenizer; drop --tokenizer")
    vocab_size = request.tokenizer.get("vocab_size")
    if tokenizer_kind == "sentencepiece" and vocab_size is not None and vocab_size != old_model.get("vocab_size"):
        raise ConfigError(
            f"--vocab-size {vocab_size} differs from the resumed run's {old_model.get('vocab_size')}; "
            "a resumed run keeps its tokenizer (drop the option, or start a new run with another --out)"
        )
    overrides = {k: v for k, v in request.train.items() if k in RESUMABLE}
    return from_dict(TrainConfig, {**old_train, **overrides})


def fine_tune_start(
    init_from: Path, model_options: dict[str, Any], tokenizer_options: dict[str, Any]
) -> tuple[CharLM, Tokenizer]:
    """The other model's weights and tokenizer; its architecture is kept (only the dropouts may change)."""
    regularisers = {k: v for k, v in model_options.items() if k in ("dropout", "weight_drop")}
    shape_options = sorted(set(model_options) - set(regularisers)) + sorted(tokenizer_options)
    if shape_options:
        raise ConfigError(
            f"{_flag(shape_options[0])} cannot change with --init-from: "
            f"the model's shape and tokenizer come from {init_from}"
        )
    loaded = build_model(load_checkpoint(init_from), init_from)
    model = loaded.model
    if regularisers:
        config = dataclasses.replace(model.config, **regularisers)
        rebuilt = CharLM(config)
        rebuilt.load_state_dict(model.state_dict())
        model = rebuilt
    return model, loaded.tokenizer


def fine_tune_vocabulary(tokenizer: Tokenizer, chars: str, grow: bool) -> Tokenizer:
    """The model's own tokenizer, or (with `grow`) one with the characters of `chars` it lacks."""
    if not isinstance(tokenizer, CharTokenizer):
        return tokenizer
    missing = tokenizer.covers(chars)
    if missing and not grow:
        shown = "".join(missing[:20])
        raise CorpusError(
            f"the corpus has {len(missing)} characters the model's vocabulary lacks ({shown!r}); "
            "pass --grow-vocab to add them"
        )
    return CharTokenizer(tokenizer.chars + missing) if missing else tokenizer


def adopt_vocabulary(model: CharLM, base: Tokenizer, tokenizer: Tokenizer, callbacks: Callbacks) -> CharLM:
    """The fine-tuned model, its embedding and output grown (visibly) when the vocabulary grew."""
    if not isinstance(base, CharTokenizer) or not isinstance(tokenizer, CharTokenizer) or tokenizer is base:
        return model
    grown = tokenizer.vocab_size - base.vocab_size
    callbacks.on_message(f"vocabulary grew by {grown} characters to {tokenizer.vocab_size}")
    return _grow_vocabulary(model, base, tokenizer)


def _grow_vocabulary(model: CharLM, old: CharTokenizer, new: CharTokenizer) -> CharLM:
    """Copy each known character's embedding and output weights to its new id; new ones start
    fresh (in the adaptive softmax, as the rarest tokens)."""
    grown = CharLM(dataclasses.replace(model.config, vocab_size=new.vocab_size))
    new_index = {c: i + 1 for i, c in enumerate(new.chars)}
    mapping = torch.tensor([0] + [new_index[c] for c in old.chars])  # old id -> new id
    with torch.no_grad():
        grown.rnn.load_state_dict(model.rnn.state_dict())
        grown.embed.weight[mapping] = model.embed.weight
        grown.head.copy_grown(model.head, mapping)
    return grown


def fit_batch(
    config: TrainConfig, train_ids: torch.Tensor, val_ids: torch.Tensor, train_chars: int, callbacks: Callbacks
) -> TrainConfig:
    """Shrink the batch, visibly, when a small corpus cannot fill it; refuse a corpus below one window."""
    if len(val_ids) < 2 or len(train_ids) - 1 < config.seq_len:
        chars_per_token = train_chars / max(len(train_ids), 1)
        raise _too_small(train_chars, config.seq_len, config.val_frac, chars_per_token)
    fits = (len(train_ids) - 1) // config.seq_len
    if fits < config.batch_size:
        callbacks.on_message(
            f"the corpus fills only {fits} streams of {config.seq_len} tokens: batch size lowered "
            f"from {config.batch_size} to {fits}"
        )
        return dataclasses.replace(config, batch_size=fits)
    return config


def _too_small(train_chars: int, seq_len: int, val_frac: float, chars_per_token: float) -> CorpusError:
    minimum = math.ceil((seq_len + 2) * chars_per_token / (1 - val_frac)) + 2
    return CorpusError(
        f"the corpus is too small: {train_chars} training characters; chargen needs at least "
        f"{minimum} characters with --seq-len {seq_len} (use more text or a smaller --seq-len)"
    )
