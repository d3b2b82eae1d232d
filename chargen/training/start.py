"""The three ways a training run starts (new, resumed, fine-tuned: see chargen.training.finetune), each a
function of the request that returns a `Start`: the run's settings, the tokenizer it wants and how
its model is made once the corpus is tokenized."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from chargen.checkpoint import build_model, load_checkpoint
from chargen.config import EVAL_ALL, ModelConfig, TokenizerConfig, TrainConfig, from_dict, resolve_output
from chargen.data.corpus import ReadOptions
from chargen.data.tokenized import Wanted, token_counts
from chargen.data.tokenizers import Tokenizer
from chargen.errors import CheckpointError, ConfigError
from chargen.model import CharLM
from chargen.model.heads import adaptive_cutoffs
from chargen.training.events import Callbacks
from chargen.training.shape_rates import RateMeter
from chargen.training.trainer import last_checkpoint_path

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
    shape_rates: RateMeter | None = None  # a new run's candidate shapes' steps/s; None: measured (shape_rates)


# The model, given the tokenizer the corpus was read with and the training ids.
ModelMaker = Callable[[Tokenizer, torch.Tensor, Callbacks], CharLM]


@dataclass
class Start:
    config: TrainConfig
    wanted: Wanted
    make_model: ModelMaker
    resume: dict[str, Any] | None = None  # the checkpoint a resumed run continues


def new_start(request: TrainRequest) -> Start:
    config = TrainConfig(**request.train)

    def make_model(tokenizer: Tokenizer, train_ids: torch.Tensor, callbacks: Callbacks) -> CharLM:
        torch.manual_seed(config.seed)  # the model's initial weights follow --seed
        return _new_model(request.model, tokenizer.vocab_size, train_ids)

    return Start(config, TokenizerConfig(**request.tokenizer), make_model)


def resumed_start(request: TrainRequest, out: Path) -> Start:
    """The run saved beside `out`, with its own settings, model and tokenizer."""
    path = last_checkpoint_path(out)
    payload = _load_resumable(path)
    config = _resumed_config(payload, request)
    loaded = build_model(payload, path)
    return Start(config, lambda facts: loaded.tokenizer, lambda *_: loaded.model, payload)


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


def flag(option: str) -> str:
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
    (The corpus is compared once it has been read: see chargen.training.run's corpus check.)"""
    old_train = {"eval_chars": EVAL_ALL, **payload.get("train_config", {})}  # runs from before the choice read all
    old_model = payload["model_config"]
    for given, old in ((request.model, old_model), (request.train, old_train)):
        for key, value in given.items():
            if key not in RESUMABLE and old.get(key) != value:
                raise ConfigError(
                    f"{flag(key)} {value} differs from the resumed run's {old.get(key)}; a resumed run keeps "
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
