"""Train a classifier from labelled examples, in two phases that share one budget:

1. split: a stratified, seeded test set (--test-frac) and validation set (--val-frac);
2. a base language model on all training text (new, or fine-tuned from --init-from);
3. the classifier: generative, a copy of the base per class, fine-tuned together on their
   classes' texts; or discriminative, the base's LSTM with a classification head trained on the
   labels. Either way the weights kept are those that classify the validation examples best;
4. a temperature fitted on the validation examples; reports; one classifier file.

Every training phase runs chargen.training.loop's loop, so budgets, schedule, Ctrl-C and
progress events behave as in `chargen train`.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from chargen.analysis.evaluate import characters_scored
from chargen.classify.api import Classifier
from chargen.classify.ensemble import EnsembleClassifier, combine, fit_share
from chargen.classify.metrics import Report, report
from chargen.classify.models import (
    DiscriminativeClassifier,
    GenerativeClassifier,
    Module,
    encode_examples,
    fit_temperature,
    joined_text,
)
from chargen.classify.ngram import NgramClassifier, train_ngram
from chargen.classify.store import LoadedClassifier, classifier_payload, save_classifier
from chargen.classify.trainer import (
    ClassifierTrainer,
    DiscriminativeTrainer,
    EncodedExamples,
    GenerativeTrainer,
    balanced_weights,
)
from chargen.config import ClassifierConfig, ModelConfig, TokenizerConfig, TrainConfig
from chargen.data.batches import Dataset
from chargen.data.corpus import ReadOptions, read_corpus
from chargen.data.labelled import Examples, Split, read_examples, require_classes, split_examples
from chargen.data.tokenizers import Tokenizer, train_tokenizer
from chargen.device import select_device, select_precision
from chargen.errors import ConfigError, TrainingDiverged
from chargen.model import CharLM
from chargen.training.events import Callbacks
from chargen.training.finetune import fine_tuned_model
from chargen.training.loop import Interrupted, TrainingLoop
from chargen.training.run import check_writable, default_out, fit_batch
from chargen.training.trainer import Trainer


@dataclass
class ClassifyRequest:
    data: Path
    out: Path | None = None
    data_format: str = "auto"
    read: ReadOptions = field(default_factory=ReadOptions)
    classifier: dict[str, Any] = field(default_factory=dict)  # only the options the user gave
    model: dict[str, Any] = field(default_factory=dict)
    tokenizer: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    init_from: Path | None = None
    pretrain_on: Path | None = None  # unlabelled text (a corpus file or folder) for the base language model


@dataclass
class Fitted:
    path: Path
    classifier: Classifier
    validation: Report
    test: Report | None
    seconds: float


def classifier_out(data: Path) -> Path:
    return default_out(data).with_suffix(".clf")


class _Budget:
    """Time shared by phases run one after another: each gets its weight's share of what is left
    (a phase that stops early leaves its time to the next)."""

    def __init__(self, seconds: float, weights: Sequence[float], started: float) -> None:
        self.seconds, self.weights, self.started = seconds, list(weights), started

    def next(self) -> float:
        weight = self.weights.pop(0)
        if not self.seconds:
            return 0.0
        left = max(self.seconds - (time.perf_counter() - self.started), 1.0)
        return left * weight / (weight + sum(self.weights))


def fit(request: ClassifyRequest, callbacks: Callbacks | None = None) -> Fitted:
    """Train, calibrate, report and save; the time budget covers everything but the test report."""
    started = time.perf_counter()
    callbacks = callbacks or Callbacks()
    config = ClassifierConfig(**request.classifier)
    train_config = TrainConfig(**{"sample_chars": 0, **request.train})
    out = request.out or classifier_out(request.data)
    check_writable(out)
    if config.method == "ngram" and (request.pretrain_on or request.init_from):
        raise ConfigError(
            "--pretrain-on and --init-from are for the LSTM's language model, which the ngram method has none of; "
            "use --method ensemble, discriminative or generative"
        )
    examples = read_examples(request.data, request.data_format, request.read)
    require_classes(examples, request.data)
    split = split_examples(examples, config.test_frac, config.val_frac, train_config.seed)
    torch.manual_seed(train_config.seed)
    device = select_device(train_config.device)
    dtype = select_precision(train_config.precision, device)
    val_labels = _labels_of(split.val, examples.classes)
    ngram = _ngram(split, examples.classes, config, callbacks) if config.method in ("ngram", "ensemble") else None
    tokenizer: Tokenizer | None = None
    parts: dict[str, Report] = {}
    if ngram is not None and config.method == "ngram":
        module, val_logits = ngram
    else:
        unlabelled = _unlabelled(request, config)
        base, tokenizer = _starting_model(request, unlabelled + joined_text(split.train.texts), callbacks)
        phases = _Phases(config, train_config, tokenizer, examples.classes, split, device, dtype, callbacks, unlabelled)
        weights = ([config.pretrain_frac] if config.pretrain_frac else []) + [1 - config.pretrain_frac]
        phases.budget = _Budget(train_config.max_time, weights, started)
        if config.pretrain_frac:
            start = "new" if request.init_from is None else f"from {request.init_from}"
            text = f" and {request.pretrain_on}" if request.pretrain_on else ""
            base = phases.base(base, f"all {len(split.train)} training examples{text}, {start}")
        lstm = phases.generative(base) if config.method == "generative" else phases.discriminative(base)
        module, val_logits = lstm if ngram is None else _ensemble(ngram, lstm, val_labels, callbacks)
        if ngram is not None:
            parts = {
                name: report(examples.classes, val_labels.tolist(), logits.argmax(1).tolist())
                for name, logits in (("ngram", ngram[1]), ("lstm", lstm[1]))
            }

    module.temperature.fill_(fit_temperature(val_logits, val_labels))
    validation = report(examples.classes, val_labels.tolist(), val_logits.argmax(1).tolist(), parts)
    classifier = Classifier(LoadedClassifier(module, tokenizer, examples.classes, config, {}), device, dtype)
    seconds = time.perf_counter() - started
    test = classifier.evaluate(split.test) if split.test is not None else None
    metrics = {"val_accuracy": validation.accuracy, "val_macro_f1": validation.macro_f1, "seconds": seconds}
    if test is not None:
        metrics.update(test_accuracy=test.accuracy, test_macro_f1=test.macro_f1)
    payload = classifier_payload(classifier.loaded, train_config, metrics, request.data, examples, split)
    save_classifier(out, payload)
    classifier.loaded.payload = payload
    return Fitted(out, classifier, validation, test, seconds)


def _labels_of(examples: Examples, classes: list[str]) -> torch.Tensor:
    return torch.tensor([classes.index(label) for label in examples.labels])


def _ngram(
    split: Split, classes: list[str], config: ClassifierConfig, callbacks: Callbacks
) -> tuple[NgramClassifier, torch.Tensor]:
    """The n-gram model (seconds), and its validation logits."""
    callbacks.on_phase("n-gram model", f"character 1-{config.ngram_max}-grams of {len(split.train)} training examples")
    train, val = split.train, split.val
    train_labels, val_labels = _labels_of(train, classes), _labels_of(val, classes)
    return train_ngram(train.texts, train_labels, val.texts, val_labels, len(classes), config.ngram_max)


def _ensemble(
    ngram: tuple[NgramClassifier, torch.Tensor],
    lstm: tuple[Module, torch.Tensor],
    val_labels: torch.Tensor,
    callbacks: Callbacks,
) -> tuple[EnsembleClassifier, torch.Tensor]:
    """Both parts calibrated, then their weights fitted, on the validation examples."""
    for part, logits in (ngram, lstm):
        part.temperature.fill_(fit_temperature(logits, val_labels))
    module = EnsembleClassifier(ngram[0], lstm[0])
    log_probs = module.part_log_probs(ngram[1], lstm[1])
    share = fit_share(*log_probs, val_labels)
    module.share.fill_(share)
    callbacks.on_message(
        f"ensemble weights fitted on the validation examples: n-gram {share:.2f}, LSTM {1 - share:.2f}"
    )
    return module, combine(*log_probs, share)


def _unlabelled(request: ClassifyRequest, config: ClassifierConfig) -> str:
    """The --pretrain-on text, each of its lines an example's worth of text for the base model."""
    if request.pretrain_on is None:
        return ""
    if not config.pretrain_frac:
        raise ConfigError("--pretrain-on trains the base language model: give --pretrain-frac above 0")
    return read_corpus(request.pretrain_on, request.read)


def _starting_model(request: ClassifyRequest, train_text: str, callbacks: Callbacks) -> tuple[CharLM, Tokenizer]:
    if request.init_from is not None:  # characters the checkpoint lacks are added
        return fine_tuned_model(request.init_from, request.model, request.tokenizer, train_text, callbacks)
    tokenizer = train_tokenizer(train_text, TokenizerConfig(**request.tokenizer))
    return CharLM(ModelConfig(vocab_size=tokenizer.vocab_size, **request.model)), tokenizer


@dataclass
class _Phases:
    """The phases of one classifier's training and what they share."""

    config: ClassifierConfig
    train_config: TrainConfig
    tokenizer: Tokenizer
    classes: list[str]
    split: Split
    device: torch.device
    dtype: torch.dtype | None
    callbacks: Callbacks
    unlabelled: str = ""  # read by the base language model before the training examples
    budget: _Budget = field(default_factory=lambda: _Budget(0, [], 0.0))

    def labels_of(self, examples: Examples) -> torch.Tensor:
        return _labels_of(examples, self.classes)

    def encoded(self, examples: Examples) -> EncodedExamples:
        return EncodedExamples(encode_examples(self.tokenizer, examples.texts), self.labels_of(examples))

    def stream_text(self, texts: list[str]) -> str:
        """Examples shuffled (seeded) and joined, for a language model to read."""
        texts = list(texts)
        random.Random(self.train_config.seed).shuffle(texts)
        return joined_text(texts)

    def run(self, trainer: TrainingLoop, phase: str) -> None:
        try:
            trainer.run()
        except Interrupted:
            raise Interrupted(f"interrupted while training the {phase}; no classifier was written") from None

    def base(self, lm: CharLM, detail: str) -> CharLM:
        """A language model of all the training text, validated on the validation examples'."""
        self.callbacks.on_phase("base language model", detail)
        train_text = self.unlabelled + self.stream_text(self.split.train.texts)
        val_text = joined_text(self.split.val.texts)
        train_ids, val_ids = self.tokenizer.encode(train_text), self.tokenizer.encode(val_text)
        config = dataclasses.replace(self.train_config, max_time=self.budget.next())
        config = fit_batch(config, train_ids, val_ids, len(train_text), self.callbacks)
        val_chars = characters_scored(self.tokenizer, val_ids)
        data = Dataset(train_ids, val_ids, len(train_text), val_chars)
        trainer = Trainer(lm, self.tokenizer, data, config, None, self.device, self.dtype, self.callbacks)
        self.run(trainer, "base language model")
        if trainer.best_weights is not None:
            lm.load_state_dict(trainer.best_weights)
        return lm

    def phase_config(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(
            self.train_config, lr=self.config.finetune_lr, max_time=self.budget.next(), **changes
        )

    def generative(self, base: CharLM) -> tuple[Module, torch.Tensor]:
        """A copy of the base per class, fine-tuned together, each on its class's text."""
        module = GenerativeClassifier(base.config, len(self.classes))
        for lm in module.lms:
            lm.load_state_dict(base.state_dict())
        counts = torch.bincount(self.labels_of(self.split.train), minlength=len(self.classes)).float()
        module.log_prior.copy_(torch.log(counts / counts.sum()))
        train = self.split.train
        texts = [
            self.stream_text([t for t, found in zip(train.texts, train.labels) if found == c]) for c in self.classes
        ]
        self.callbacks.on_phase("class language models", f"one per label ({', '.join(self.classes)}), from the base")
        trainer = GenerativeTrainer(
            module,
            [self.tokenizer.encode(text) for text in texts],
            self.encoded(self.split.val),
            self.classes,
            self.phase_config(),
            self.device,
            self.dtype,
            self.callbacks,
        )
        return self.classifier_phase(trainer, module, "class language models")

    def discriminative(self, base: CharLM) -> tuple[Module, torch.Tensor]:
        """The base's embedding and LSTM under a classification head, trained on the labels."""
        config = self.config
        module = DiscriminativeClassifier(base.config, len(self.classes), config.pooling, config.max_len)
        module.lm.load_state_dict(base.state_dict())
        train = self.encoded(self.split.train)
        weights = balanced_weights(train.labels, len(self.classes)) if config.class_weights else None
        self.callbacks.on_phase("classifier", f"{len(train.labels)} training examples, LSTM from the base")
        trainer = DiscriminativeTrainer(
            module,
            train,
            self.encoded(self.split.val),
            self.classes,
            weights,
            self.phase_config(batch_size=config.batch_size),
            self.device,
            self.dtype,
            self.callbacks,
        )
        return self.classifier_phase(trainer, module, "classifier")

    def classifier_phase(self, trainer: ClassifierTrainer, module: Module, phase: str) -> tuple[Module, torch.Tensor]:
        """Train; the best weights and their validation scores."""
        self.run(trainer, phase)
        if trainer.best_weights is None:
            raise TrainingDiverged(f"the {phase} never reached a finite validation loss; try a lower --finetune-lr")
        module.load_state_dict(trainer.best_weights)
        return module, trainer.best_val_logits
