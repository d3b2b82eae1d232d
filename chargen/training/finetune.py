"""Fine-tuning (--init-from): another model's weights and tokenizer as the start of a run on new text,
its vocabulary grown (with --grow-vocab) by the characters the new text adds."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from chargen.checkpoint import build_model, load_checkpoint
from chargen.config import TrainConfig
from chargen.data.tokenizers import CharTokenizer, Tokenizer
from chargen.errors import ConfigError, CorpusError
from chargen.model import CharLM
from chargen.training.events import Callbacks
from chargen.training.start import Start, TrainRequest, flag


def fine_tune_start(request: TrainRequest) -> Start:
    """A new run from the model at `request.init_from`: new settings, the model's shape."""
    assert request.init_from is not None
    config = TrainConfig(**request.train)
    torch.manual_seed(config.seed)
    model, base = base_model(request.init_from, request.model, request.tokenizer)

    def make_model(tokenizer: Tokenizer, train_ids: torch.Tensor, callbacks: Callbacks) -> CharLM:
        return adopt_vocabulary(model, base, tokenizer, callbacks)

    return Start(config, lambda facts: fine_tune_vocabulary(base, facts.chars_seen, request.grow_vocab), make_model)


def fine_tuned_model(
    init_from: Path, model_options: dict[str, Any], tokenizer_options: dict[str, Any], text: str, callbacks: Callbacks
) -> tuple[CharLM, Tokenizer]:
    """The model at `init_from` and its tokenizer, both grown by the characters of `text` they lack
    (the start of a classifier's base language model)."""
    model, base = base_model(init_from, model_options, tokenizer_options)
    tokenizer = fine_tune_vocabulary(base, text, grow=True)
    return adopt_vocabulary(model, base, tokenizer, callbacks), tokenizer


def base_model(
    init_from: Path, model_options: dict[str, Any], tokenizer_options: dict[str, Any]
) -> tuple[CharLM, Tokenizer]:
    """The other model's weights and tokenizer; its architecture is kept (only the dropouts may change)."""
    regularisers = {k: v for k, v in model_options.items() if k in ("dropout", "weight_drop")}
    shape_options = sorted(set(model_options) - set(regularisers)) + sorted(tokenizer_options)
    if shape_options:
        raise ConfigError(
            f"{flag(shape_options[0])} cannot change with --init-from: "
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
