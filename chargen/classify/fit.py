"""Train a classifier from labelled examples, in phases that share one budget:

1. split: a stratified, seeded test set (--test-frac) and validation set (--val-frac);
2. a base language model on all training text (new, or fine-tuned from --init-from);
3. generative: a copy of the base fine-tuned on each class's text; discriminative: the base's
   LSTM with a classification head, trained on the labels;
4. a temperature fitted on the validation examples; reports; one classifier file.

Every training phase runs chargen.training.loop's loop, so budgets, schedule, Ctrl-C and
progress events behave as in `chargen train`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from chargen.analysis.evaluate import characters_scored
from chargen.classify.api import Classifier
from chargen.classify.metrics import Report, report
from chargen.classify.models import (
    DiscriminativeClassifier,
    GenerativeClassifier,
    encode_examples,
    example_bits,
    fit_temperature,
    joined_text,
)
from chargen.classify.store import LoadedClassifier, Module, save_classifier
from chargen.classify.trainer import ClassifierTrainer, EncodedExamples, balanced_weights
from chargen.config import ClassifierConfig, ModelConfig, TokenizerConfig, TrainConfig, to_dict
from chargen.data.batches import Dataset
from chargen.data.corpus import ReadOptions
from chargen.data.labelled import Examples, hold_out, read_examples, require_classes
from chargen.data.tokenizers import Tokenizer, train_tokenizer
from chargen.device import select_device, select_precision
from chargen.model import CharLM
from chargen.training.events import Callbacks, ClassifierEvalEvent
from chargen.training.loop import Interrupted, TrainingLoop
from chargen.training.run import check_writable, default_out, fine_tune_start, fit_batch
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


@dataclass
class Split:
    train: Examples
    val: Examples
    test: Examples | None


@dataclass
class Fitted:
    path: Path
    classifier: Classifier
    validation: Report
    test: Report | None
    seconds: float


def classifier_out(data: Path) -> Path:
    return default_out(data).with_suffix(".clf")


def fingerprint(examples: Examples) -> str:
    """Identifies a data set, so evaluation can recognise the one a classifier was trained on."""
    digest = hashlib.sha256()
    for label, text in zip(examples.labels, examples.texts):
        digest.update(f"{label}\x1f{text}\x1e".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def split_examples(examples: Examples, test_frac: float, val_frac: float, seed: int) -> Split:
    """The same examples, fractions and seed always give the same split."""
    rest, test = hold_out(examples, test_frac, seed, "test") if test_frac else (examples, None)
    train, val = hold_out(rest, val_frac, seed, "validation")
    return Split(train, val, test)


class _Budget:
    """Time shared by phases run one after another: each gets its weight's share of what is left
    (a phase that stops early leaves its time to the next)."""

    def __init__(self, seconds: float, weights: Sequence[float]) -> None:
        self.seconds, self.weights, self.started = seconds, list(weights), time.perf_counter()

    def next(self) -> float:
        weight = self.weights.pop(0)
        if not self.seconds:
            return 0.0
        left = max(self.seconds - (time.perf_counter() - self.started), 1.0)
        return left * weight / (weight + sum(self.weights))


def fit(request: ClassifyRequest, callbacks: Callbacks | None = None) -> Fitted:
    callbacks = callbacks or Callbacks()
    started = time.perf_counter()
    config = ClassifierConfig(**request.classifier)
    train_config = TrainConfig(**{"sample_chars": 0, **request.train})
    out = request.out or classifier_out(request.data)
    check_writable(out)
    examples = read_examples(request.data, request.data_format, request.read)
    require_classes(examples, request.data)
    split = split_examples(examples, config.test_frac, config.val_frac, train_config.seed)
    classes = examples.classes
    torch.manual_seed(train_config.seed)
    base, tokenizer = _starting_model(request, joined_text(split.train.texts), callbacks)
    device = select_device(train_config.device)
    dtype = select_precision(train_config.precision, device)
    phases = _Phases(config, train_config, tokenizer, classes, split, device, dtype, callbacks)

    class_chars = [sum(map(len, phases.texts_of(split.train, c))) for c in classes]
    method_weights = [c / sum(class_chars) for c in class_chars] if config.method == "generative" else [1.0]
    pretrain = [config.pretrain_frac] if config.pretrain_frac else []
    phases.budget = _Budget(train_config.max_time, pretrain + [(1 - config.pretrain_frac) * w for w in method_weights])
    if pretrain:
        start = "new" if request.init_from is None else f"from {request.init_from}"
        detail = f"all {len(split.train)} training examples, {start}"
        base = phases.train_lm("base language model", detail, base, split.train)
    module = phases.generative(base) if config.method == "generative" else phases.discriminative(base)

    # Probabilities calibrated on the validation examples, scored as they will be in use.
    classifier = Classifier(LoadedClassifier(module, tokenizer, classes, config, {}), device, dtype)
    val_logits = classifier.scores(split.val.texts).logits
    val_labels = phases.labels_of(split.val)
    module.temperature.fill_(fit_temperature(val_logits, val_labels))
    validation = report(classes, val_labels.tolist(), val_logits.argmax(1).tolist())
    test = classifier.evaluate(split.test) if split.test is not None else None
    seconds = time.perf_counter() - started
    metrics = {"val_accuracy": validation.accuracy, "val_macro_f1": validation.macro_f1, "seconds": seconds}
    if test is not None:
        metrics.update(test_accuracy=test.accuracy, test_macro_f1=test.macro_f1)
    payload = {
        "labels": classes,
        "classifier_config": to_dict(config),
        "model_config": to_dict(base.config),
        "tokenizer": tokenizer.state(),
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "metrics": metrics,
        "train_config": to_dict(train_config),
        "data": {
            "source": str(request.data),
            "fingerprint": fingerprint(examples),
            "counts": examples.counts(),
            "train": len(split.train),
            "val": len(split.val),
            "test": len(split.test) if split.test is not None else 0,
            "seed": train_config.seed,
        },
    }
    save_classifier(out, payload)
    classifier.loaded.payload = payload
    return Fitted(out, classifier, validation, test, seconds)


def _starting_model(request: ClassifyRequest, train_text: str, callbacks: Callbacks) -> tuple[CharLM, Tokenizer]:
    if request.init_from is not None:  # characters the checkpoint lacks are added
        return fine_tune_start(request.init_from, train_text, request.model, request.tokenizer, True, callbacks)
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
    budget: _Budget = field(default_factory=lambda: _Budget(0, []))

    @staticmethod
    def texts_of(examples: Examples, label: str) -> list[str]:
        return [t for t, found in zip(examples.texts, examples.labels) if found == label]

    def labels_of(self, examples: Examples) -> torch.Tensor:
        return torch.tensor([self.classes.index(label) for label in examples.labels])

    def run(self, trainer: TrainingLoop, phase: str) -> None:
        try:
            trainer.run()
        except Interrupted:
            raise Interrupted(f"interrupted while training the {phase}; no classifier was written") from None

    def train_lm(self, phase: str, detail: str, lm: CharLM, examples: Examples, lr: float | None = None) -> CharLM:
        """Language-model training on the examples (shuffled, joined by separators); validated
        on the validation examples of the same classes. Returns the best weights' model."""
        self.callbacks.on_phase(phase, detail)
        texts = list(examples.texts)
        random.Random(self.train_config.seed).shuffle(texts)
        val_texts = [t for t, label in zip(self.split.val.texts, self.split.val.labels) if label in examples.labels]
        train_text, val_text = joined_text(texts), joined_text(val_texts)
        train_ids, val_ids = self.tokenizer.encode(train_text), self.tokenizer.encode(val_text)
        config = dataclasses.replace(
            self.train_config,
            lr=lr or self.train_config.lr,
            max_time=self.budget.next(),
            seq_len=min(self.train_config.seq_len, len(train_ids) - 1),  # a small class still makes one window
        )
        config = fit_batch(config, train_ids, val_ids, train_text, self.callbacks)
        val_chars = characters_scored(val_text, self.tokenizer.decode(val_ids[:1]))
        data = Dataset(train_ids, val_ids, len(train_text), val_chars)
        trainer = Trainer(lm, self.tokenizer, data, config, None, self.device, self.dtype, self.callbacks)
        self.run(trainer, phase)
        if trainer.best_weights is not None:
            lm.load_state_dict(trainer.best_weights)
        return lm

    def generative(self, base: CharLM) -> Module:
        """A copy of the base fine-tuned per class; after each, the validation accuracy so far
        (classes not yet fine-tuned score with the base)."""
        module = GenerativeClassifier(base.config, len(self.classes))
        counts = torch.bincount(self.labels_of(self.split.train), minlength=len(self.classes)).float()
        module.log_prior.copy_(torch.log(counts / counts.sum()))
        val_sequences = encode_examples(self.tokenizer, self.split.val.texts)
        val_labels = self.labels_of(self.split.val)
        bits = example_bits(base, val_sequences, self.device, self.dtype)[:, None].repeat(1, len(self.classes))
        best_loss = math.inf
        for k, label in enumerate(self.classes):
            members = self.split.train.subset([i for i, found in enumerate(self.split.train.labels) if found == label])
            phase = f"language model of {label!r}"
            detail = f"{len(members)} training examples, fine-tuned from the base"
            module.lms[k] = self.train_lm(phase, detail, copy.deepcopy(base), members, self.config.finetune_lr)
            bits[:, k] = example_bits(module.lms[k], val_sequences, self.device, self.dtype)
            logits = module.logits_from_bits(bits)
            val_loss = float(F.cross_entropy(logits, val_labels))
            scored = report(self.classes, val_labels.tolist(), logits.argmax(1).tolist())
            event = ClassifierEvalEvent(
                phase, None, math.nan, val_loss, scored.accuracy, scored.macro_f1, val_loss < best_loss
            )
            self.callbacks.on_classifier_eval(event)
            best_loss = min(best_loss, val_loss)
        return module

    def discriminative(self, base: CharLM) -> Module:
        """The base's embedding and LSTM under a classification head, trained on the labels."""
        config = self.config
        module = DiscriminativeClassifier(base.config, len(self.classes), config.pooling, config.max_len)
        module.lm.load_state_dict(base.state_dict())
        train = EncodedExamples(
            encode_examples(self.tokenizer, self.split.train.texts), self.labels_of(self.split.train)
        )
        val = EncodedExamples(encode_examples(self.tokenizer, self.split.val.texts), self.labels_of(self.split.val))
        weights = balanced_weights(train.labels, len(self.classes)) if config.class_weights else None
        phase_config = dataclasses.replace(
            self.train_config, lr=config.finetune_lr, batch_size=config.batch_size, max_time=self.budget.next()
        )
        self.callbacks.on_phase("classifier", f"{len(train.labels)} training examples, LSTM from the base")
        trainer = ClassifierTrainer(
            module, train, val, self.classes, weights, phase_config, self.device, self.dtype, self.callbacks
        )
        self.run(trainer, "classifier")
        if trainer.best_weights is not None:
            module.load_state_dict(trainer.best_weights)
        return module
