"""The classifier file: one self-contained file holding the tokenizer, the weights, the labels and
the method (and, for the n-gram model, its vocabulary: a list of strings). It is a chargen
checkpoint of another kind, so it is written atomically and loaded
safely (`weights_only=True`, zip checksums, validated fields) by chargen.checkpoint's code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chargen.checkpoint import FileKind, load_checkpoint, load_weights, read_model_config, save_checkpoint
from chargen.classify.ensemble import EnsembleClassifier
from chargen.classify.models import DiscriminativeClassifier, GenerativeClassifier, Module
from chargen.classify.ngram import NgramClassifier
from chargen.config import ClassifierConfig, ModelConfig, TrainConfig, from_dict, to_dict
from chargen.data.labelled import Examples, Split, fingerprint
from chargen.data.tokenizers import Tokenizer
from chargen.errors import CheckpointError, ConfigError

CLASSIFIER = FileKind(
    "chargen-classifier",
    1,
    "classifier",
    required={
        "labels": list,
        "classifier_config": dict,
        "model": dict,
        "metrics": dict,
        "data": dict,
    },
    optional={"train_config": dict, "model_config": dict, "tokenizer": dict, "ngram": dict},  # by method
)


@dataclass
class LoadedClassifier:
    module: Module | NgramClassifier | EnsembleClassifier
    tokenizer: Tokenizer | None  # None for the n-gram model, which reads characters itself
    labels: list[str]
    config: ClassifierConfig
    payload: dict[str, Any]


def new_lstm_module(config: ClassifierConfig, model_config: ModelConfig, classes: int) -> Module:
    if config.method == "generative":
        return GenerativeClassifier(model_config, classes)
    return DiscriminativeClassifier(model_config, classes, config.pooling, config.max_len)


def ngram_state(module: LoadedClassifier) -> dict[str, Any] | None:
    """What the file keeps of the n-gram model besides its weights, if the classifier has one."""
    found = module.module if isinstance(module.module, NgramClassifier) else getattr(module.module, "ngram", None)
    return None if found is None else {"vocabulary": found.vocabulary, "longest": found.longest}


def _ngram_module(payload: dict[str, Any], classes: int, source: str | Path) -> NgramClassifier:
    state = payload.get("ngram")
    vocabulary, longest = (state or {}).get("vocabulary"), (state or {}).get("longest")
    if (
        not isinstance(vocabulary, list)
        or not all(isinstance(g, str) for g in vocabulary)
        or not isinstance(longest, int)
    ):
        raise CheckpointError(f"{source}: its n-gram model has no valid vocabulary; train the classifier again")
    return NgramClassifier(vocabulary, classes, longest)


def classifier_payload(
    loaded: LoadedClassifier,
    train_config: TrainConfig,
    metrics: dict[str, float],
    source: Path,
    examples: Examples,
    split: Split,
) -> dict[str, Any]:
    """What the file holds: the parts the method has, and where the examples came from."""
    lm_config, ngram = _lm_config(loaded.module), ngram_state(loaded)
    return {
        "labels": loaded.labels,
        "classifier_config": to_dict(loaded.config),
        **({} if lm_config is None else {"model_config": to_dict(lm_config)}),
        **({} if loaded.tokenizer is None else {"tokenizer": loaded.tokenizer.state()}),
        **({} if ngram is None else {"ngram": ngram}),
        "model": {k: v.detach().cpu() for k, v in loaded.module.state_dict().items()},
        "metrics": metrics,
        "train_config": to_dict(train_config),
        "data": {
            "source": str(source),
            "fingerprint": fingerprint(examples),
            "counts": examples.counts(),
            "train": len(split.train),
            "val": len(split.val),
            "test": len(split.test) if split.test is not None else 0,
            "seed": train_config.seed,
        },
    }


def _lm_config(module: Module | NgramClassifier | EnsembleClassifier) -> ModelConfig | None:
    if isinstance(module, EnsembleClassifier):
        module = module.lstm
    if isinstance(module, NgramClassifier):
        return None
    return module.lms[0].config if isinstance(module, GenerativeClassifier) else module.lm.config


def save_classifier(path: Path, payload: dict[str, Any]) -> None:
    save_checkpoint(path, payload, CLASSIFIER)


def build_classifier(payload: dict[str, Any], source: str | Path) -> LoadedClassifier:
    try:
        config = from_dict(ClassifierConfig, payload["classifier_config"])
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{source} has an invalid classifier_config: {err}") from None
    labels = payload["labels"]
    if len(labels) < 2 or not all(isinstance(label, str) for label in labels):
        raise CheckpointError(f"{source}: its labels should be two or more strings")
    module: Module | NgramClassifier | EnsembleClassifier
    tokenizer = None
    if config.method == "ngram":
        module = _ngram_module(payload, len(labels), source)
    else:
        model_config, tokenizer = read_model_config(payload, source)
        module = new_lstm_module(config, model_config, len(labels))
        if config.method == "ensemble":
            module = EnsembleClassifier(_ngram_module(payload, len(labels), source), module)
    load_weights(module, payload["model"], source)
    return LoadedClassifier(module, tokenizer, labels, config, payload)


def load_classifier_file(path: str | Path) -> LoadedClassifier:
    return build_classifier(load_checkpoint(path, CLASSIFIER), path)
