"""What the training loop tells a front end, and the hooks it tells it through (so the loop
never imports terminal code)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StepEvent:
    step: int
    loss: float  # this step's mean loss, nats per token
    epoch: float
    train_bpc: float
    lr: float
    chars_per_sec: float
    elapsed: float
    fraction_done: float
    threads: int = 0  # torch threads the step ran on (0: not told)


@dataclass
class EvalEvent:
    step: int
    epoch: float
    train_bpc: float
    val_bpc: float
    best_val_bpc: float
    improved: bool
    eval_seconds: float
    elapsed: float
    sample: str


@dataclass
class WorkEvent:
    """Progress through one pass over the corpus before training (reading it, encoding it)."""

    task: str
    done: int  # bytes
    total: int


@dataclass
class ClassifierEvalEvent:
    """A classifier measured on its validation examples during training."""

    step: int
    train_loss: float  # the training objective, nats (per example, or per token for language models)
    val_loss: float  # calibrated cross-entropy, nats per example
    accuracy: float
    macro_f1: float
    improved: bool


class Callbacks:
    """Hooks for a front end; the defaults do nothing."""

    def on_step(self, event: StepEvent) -> None: ...

    def on_eval(self, event: EvalEvent) -> None: ...

    def on_message(self, message: str) -> None: ...

    def on_work(self, event: WorkEvent) -> None: ...

    def on_phase(self, name: str, detail: str) -> None:
        """A run made of several trainings (a classifier's) starts the next one."""

    def on_classifier_eval(self, event: ClassifierEvalEvent) -> None: ...
