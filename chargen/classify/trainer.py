"""The classifier phase of both methods: the generative one's class language models trained
together, or the discriminative one's LSTM and head on labelled examples. Both are validated
on held-out examples as classifiers; the loop (schedule, budgets, patience, Ctrl-C, events) is
chargen.training.loop's, as for a language model."""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from chargen.classify.metrics import report
from chargen.classify.models import DiscriminativeClassifier, GenerativeClassifier, Module, calibrated_loss, pad
from chargen.config import TrainConfig
from chargen.data.batches import Cursor, StreamBatches
from chargen.device import autocast
from chargen.model import State, detach_state
from chargen.training.events import Callbacks, ClassifierEvalEvent
from chargen.training.loop import TrainingLoop

_SORT_GROUP = 50  # batches drawn together and sorted by length: little padding, still shuffled


@dataclass
class EncodedExamples:
    sequences: list[Tensor]  # ids of SEPARATOR + text + SEPARATOR
    labels: Tensor  # (N,) class indexes


class ExampleBatches:
    """A fresh seeded order every epoch; `Cursor.offset` counts batches into the epoch."""

    def __init__(self, examples: EncodedExamples, batch_size: int, max_len: int, seed: int) -> None:
        self.examples, self.batch_size, self.max_len, self.seed = examples, batch_size, max_len, seed
        self.lengths = [min(len(s), max_len) for s in examples.sequences]
        self._epoch, self._order = -1, [[0]]

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def order(self, epoch: int) -> list[list[int]]:
        if epoch != self._epoch:
            rng = random.Random(self.seed * 1_000_003 + epoch)
            shuffled = rng.sample(range(len(self.lengths)), len(self.lengths))
            group = self.batch_size * _SORT_GROUP
            batches = []
            for start in range(0, len(shuffled), group):
                members = sorted(shuffled[start : start + group], key=self.lengths.__getitem__)
                batches += [members[i : i + self.batch_size] for i in range(0, len(members), self.batch_size)]
            rng.shuffle(batches)
            self._epoch, self._order = epoch, batches
        return self._order

    def batch(self, cursor: Cursor) -> tuple[Tensor, Tensor, Tensor, Cursor]:
        """ids (B, T), lengths (B,), labels (B,) at `cursor`, and the cursor after them."""
        order = self.order(cursor.epoch)
        members = order[cursor.offset]
        ids, lengths = pad([self.examples.sequences[i] for i in members], self.max_len)
        following = cursor.offset + 1
        nxt = Cursor(cursor.epoch, following) if following < len(order) else Cursor(cursor.epoch + 1, 0)
        return ids, lengths, self.examples.labels[members], nxt

    def epoch_progress(self, cursor: Cursor) -> float:
        return cursor.epoch + cursor.offset / self.batches_per_epoch


def balanced_weights(labels: Tensor, classes: int) -> Tensor:
    """Inverse class frequency, averaging 1 over the examples: each class weighs the same in the loss."""
    counts = torch.bincount(labels, minlength=classes).float().clamp(min=1)
    return len(labels) / (classes * counts)


class ClassifierTrainer(TrainingLoop):
    """What both methods' classifier phases share: validation on held-out examples, scored as
    in use and judged by their calibrated cross-entropy (so a model is chosen for telling the
    classes apart, not for how confident it sounds); the best weights and their validation
    scores kept in memory; no files written."""

    def __init__(
        self,
        model: Module,
        val: EncodedExamples,
        labels: list[str],
        class_weights: Tensor | None,
        config: TrainConfig,
        device: torch.device,
        dtype: torch.dtype | None,
        callbacks: Callbacks | None,
    ) -> None:
        super().__init__(model, config, device, dtype, callbacks)
        self.val, self.labels, self.class_weights = val, labels, class_weights
        self.best_weights: dict[str, Tensor] | None = None
        self.best_val_logits = torch.zeros(0)
        self._val_logits = torch.zeros(0)
        torch.manual_seed(config.seed)

    def validate(self) -> float:
        self._val_logits = self.model.scores(self.val.sequences, self.device, self.dtype).logits
        return calibrated_loss(self._val_logits, self.val.labels, self.class_weights)

    def evaluated(self, improved: bool, train_losses: list[float], eval_seconds: float) -> None:
        if improved:
            self.best_weights = copy.deepcopy(self.model.state_dict())
            self.best_val_logits = self._val_logits
        scored = report(self.labels, self.val.labels.tolist(), self._val_logits.argmax(1).tolist())
        train_loss = sum(train_losses) / len(train_losses) if train_losses else math.nan
        p = self.progress
        event = ClassifierEvalEvent(p.step, train_loss, p.last_val_loss, scored.accuracy, scored.macro_f1, improved)
        self.callbacks.on_classifier_eval(event)

    def interrupted(self) -> str:
        return f"interrupted at step {self.progress.step}"


class DiscriminativeTrainer(ClassifierTrainer):
    """The LSTM and its head on batches of labelled examples, cross-entropy weighted by class."""

    def __init__(
        self,
        model: DiscriminativeClassifier,
        train: EncodedExamples,
        val: EncodedExamples,
        labels: list[str],
        class_weights: Tensor | None,
        config: TrainConfig,
        device: torch.device,
        dtype: torch.dtype | None,
        callbacks: Callbacks | None = None,
    ) -> None:
        super().__init__(model, val, labels, class_weights, config, device, dtype, callbacks)
        self.batches = ExampleBatches(train, config.batch_size, model.max_len, config.seed)
        self._chars = 0

    def batch_loss(self) -> Tensor:
        ids, lengths, labels, cursor = self.batches.batch(self.progress.cursor)
        with autocast(self.device, self.dtype):
            logits = self.model(ids.to(self.device), lengths)  # (B, K)
        weights = None if self.class_weights is None else self.class_weights.to(self.device)
        self._chars = int(lengths.sum())
        self.progress.cursor = cursor
        return F.cross_entropy(logits, labels.to(self.device), weight=weights)

    def after_update(self, finite: bool) -> None:
        """Nothing is carried from one batch to the next."""

    def epoch_progress(self) -> float:
        return self.batches.epoch_progress(self.progress.cursor)

    def chars_per_step(self) -> float:
        return self._chars


class GenerativeTrainer(ClassifierTrainer):
    """Every class's language model on its own class's text, all in one step: each reads its
    text as parallel streams (chargen.data.batches), with rows in proportion to the text's
    length, so that the classes go through their texts at the same pace."""

    def __init__(
        self,
        model: GenerativeClassifier,
        texts: list[Tensor],  # token ids of each class's training text
        val: EncodedExamples,
        labels: list[str],
        config: TrainConfig,
        device: torch.device,
        dtype: torch.dtype | None,
        callbacks: Callbacks | None = None,
    ) -> None:
        super().__init__(model, val, labels, None, config, device, dtype, callbacks)
        self.lms = list(model.lms)
        longest = max(len(ids) for ids in texts)
        self.streams = []
        for ids in texts:
            seq_len = min(config.seq_len, len(ids) - 1)  # a small class still makes one window
            rows = min(max(1, round(config.batch_size * len(ids) / longest)), (len(ids) - 1) // seq_len)
            self.streams.append(StreamBatches(ids, rows, seq_len))
        self.cursors = [Cursor() for _ in texts]
        self.states: list[State | None] = [None] * len(texts)
        self._next_states: list[State | None] = [None] * len(texts)

    def batch_loss(self) -> Tensor:
        """The class models' mean losses, summed: each model gets its own gradient."""
        total = torch.zeros((), device=self.device)
        for k, (lm, streams) in enumerate(zip(self.lms, self.streams)):
            x, y, self.cursors[k], new_epoch = streams.window(self.cursors[k])
            if new_epoch or self.states[k] is None:
                self.states[k] = lm.initial_state(streams.batch_size, self.device)
            with autocast(self.device, self.dtype):
                token_nll, self._next_states[k] = lm.nll(x.to(self.device), y.to(self.device), self.states[k])
            total = total + token_nll.mean()
        return total

    def after_update(self, finite: bool) -> None:
        self.states = [detach_state(s) if finite and s is not None else None for s in self._next_states]

    def epoch_progress(self) -> float:
        return max(streams.epoch_progress(cursor) for streams, cursor in zip(self.streams, self.cursors))

    def chars_per_step(self) -> float:
        return sum(s.batch_size * s.seq_len for s in self.streams)  # tokens, for a character tokenizer
