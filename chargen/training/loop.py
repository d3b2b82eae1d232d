"""The one training loop: optimizer, learning-rate schedule, budgets, evaluation cadence and
patience, non-finite steps, Ctrl-C and progress events.

What is trained is a subclass's business: a language model reading streams of text
(chargen.training.trainer) or a classifier reading labelled examples (chargen.classify.trainer).
A subclass supplies the next batch's loss, how far through an epoch it is, the validation score,
and what to keep after an evaluation; everything else about a run is decided here, once.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from chargen.config import TrainConfig
from chargen.data.batches import Cursor
from chargen.errors import ChargenError, TrainingDiverged
from chargen.threads import FairThreads, chosen_by_user
from chargen.training.distributed import World
from chargen.training.events import Callbacks, StepEvent

MAX_NONFINITE_IN_A_ROW = 5


class Interrupted(ChargenError):
    exit_code = 130


@dataclass
class Progress:
    """Everything about a run's position that a resume must restore. Validation losses are
    bits per character for a language model."""

    step: int = 0
    cursor: Cursor = field(default_factory=Cursor)
    elapsed: float = 0.0
    best_val_loss: float = math.inf
    last_val_loss: float = math.nan
    evals_without_improvement: int = 0
    nonfinite_steps: int = 0
    result_val_loss: float = math.nan  # the run's result, once it has ended (a subclass's `finish`)


def lr_at(config: TrainConfig, step: int, fraction_done: float) -> float:
    """Linear warmup over steps, then cosine decay over the budget's fraction used, so that when
    the budget is time the decay ends when the time does."""
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    floor = config.lr * config.min_lr_frac
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, fraction_done)))
    return warm * (floor + (config.lr - floor) * cosine)


class TrainingLoop(ABC):
    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        device: torch.device,
        dtype: torch.dtype | None,
        callbacks: Callbacks | None = None,
        world: World | None = None,
    ) -> None:
        self.model = model.to(device)
        self.world = world or World()
        self.config = config
        self.device = device
        self.dtype = dtype
        self.callbacks = callbacks or Callbacks()
        self.optimizer = self._make_optimizer()
        self.progress = Progress()
        most = torch.get_num_threads()
        shared = device.type == "cpu" and most > 1 and not chosen_by_user(config.threads)
        self.fair_threads = FairThreads(most) if shared else None  # chargen's own thread count follows the load
        self._stop_requested = False  # by Ctrl-C, on this rank
        self._interrupted = False  # agreed by every rank: only this one steers the loop
        self.finishing = False  # the evaluation underway is the run's last by its budget

    # --- what a subclass supplies -------------------------------------------------------------
    @abstractmethod
    def batch_loss(self) -> Tensor:
        """The mean loss of the next training batch, graph attached; moves `progress.cursor` on."""

    @abstractmethod
    def after_update(self, finite: bool) -> None:
        """After each step, told whether its loss and gradients were finite (and so applied)."""

    @abstractmethod
    def epoch_progress(self) -> float:
        """Epochs done, fractional."""

    @abstractmethod
    def chars_per_step(self) -> float:
        """Characters of text read by the last step (for the speed shown)."""

    def train_bpc(self, losses: list[float]) -> float:
        """Recent training loss in bits per character, where that means something."""
        return math.nan

    @abstractmethod
    def validate(self) -> float:
        """The validation loss (lower is better)."""

    @abstractmethod
    def evaluated(self, improved: bool, train_losses: list[float], eval_seconds: float) -> None:
        """After each evaluation (`progress` already updated): keep what is worth keeping, tell the front end."""

    def final_extra_seconds(self) -> float:
        """How much longer than the last evaluation the run's last one will take."""
        return 0.0

    def finish(self) -> None:
        """The run has ended by its budget or patience: settle `progress.result_val_loss`."""
        self.progress.result_val_loss = self.progress.best_val_loss

    @abstractmethod
    def interrupted(self) -> str:
        """Ctrl-C ended the run: keep what a restart needs, and say what happened."""

    def _make_optimizer(self) -> torch.optim.Optimizer:
        """Weight decay on matrices only; biases and embedding tables are not decayed."""
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            is_embedding = "embed" in name.split(".")
            (decay if p.dim() >= 2 and not is_embedding else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        fused = self.device.type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=self.config.lr, betas=(0.9, 0.99), fused=fused)

    # --- budget -------------------------------------------------------------------------------
    def fraction_done(self) -> float:
        c, p = self.config, self.progress
        parts = [0.0]
        if c.max_steps:
            parts.append(p.step / c.max_steps)
        if c.max_epochs:
            parts.append(self.epoch_progress() / c.max_epochs)
        if c.max_time:
            parts.append(p.elapsed / c.max_time)
        return max(parts)

    # --- the loop -----------------------------------------------------------------------------
    def train_step(self) -> float:
        """One batch: forward, backward, clip, update. Returns the mean loss (nats)."""
        lr = lr_at(self.config, self.progress.step, self.fraction_done())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        loss = self.batch_loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        value = float(loss.detach())
        finite = math.isfinite(value) and math.isfinite(float(grad_norm))
        if finite:
            self.optimizer.step()
            self.progress.nonfinite_steps = 0
        else:
            self.progress.nonfinite_steps += 1
            if self.progress.nonfinite_steps >= MAX_NONFINITE_IN_A_ROW:
                raise TrainingDiverged(
                    f"training diverged: loss was not finite {MAX_NONFINITE_IN_A_ROW} steps in a row "
                    f"at step {self.progress.step}; try a lower --lr (now {self.config.lr})"
                )
            self.callbacks.on_message(f"step {self.progress.step}: loss not finite, step skipped")
        self.after_update(finite)
        self.progress.step += 1
        return value

    def request_stop(self) -> None:
        """Finish the current step, keep what a restart needs, then raise Interrupted."""
        self._stop_requested = True

    def run(self) -> Progress:
        """Train until a budget is used or patience runs out."""
        previous = self._catch_interrupts()
        try:
            self._loop()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            if self.fair_threads is not None:
                torch.set_num_threads(self.fair_threads.most)
        return self.progress

    def _share_cores(self) -> None:
        """Leave the cores other processes keep busy to them, and take them back when freed. Only
        the first change is told (the progress line shows the count): a run beside a load that
        comes and goes would otherwise fill the terminal with these lines."""
        fair = self.fair_threads
        if fair is None or fair.update() == torch.get_num_threads():
            return
        torch.set_num_threads(fair.threads)
        if fair.changes == 1:
            self.callbacks.on_message(
                f"other processes keep {fair.others:.1f} of the CPUs busy: "
                f"training on {fair.threads} thread{'s' if fair.threads > 1 else ''} "
                "(the count follows their load from here on)"
            )

    def _loop(self) -> None:
        c, p = self.config, self.progress
        window_losses: list[float] = []
        last_eval_seconds = 0.0
        clock = time.perf_counter()
        rate_clock, rate_chars = clock, 0.0
        while self.fraction_done() < 1.0 and not self._interrupted:
            loss = self.train_step()
            if math.isfinite(loss):
                window_losses.append(loss)
            now = time.perf_counter()
            p.elapsed += now - clock
            clock = now
            self._share_cores()
            rate_chars += self.chars_per_step()
            self.callbacks.on_step(
                StepEvent(
                    p.step,
                    loss,
                    self.epoch_progress(),
                    self.train_bpc(window_losses[-50:]),
                    self.optimizer.param_groups[0]["lr"],
                    rate_chars / max(now - rate_clock, 1e-9),
                    p.elapsed,
                    self.fraction_done(),
                    torch.get_num_threads(),
                )
            )
            if now - rate_clock > 10:
                rate_clock, rate_chars = now, 0.0
            # Every rank goes on with the same clock and stop request, so all decide alike.
            p.elapsed, stop_requested, last_eval_seconds = self.world.agree_max(
                [p.elapsed, float(self._stop_requested), last_eval_seconds]
            )
            self._interrupted = bool(stop_requested)
            time_left = c.max_time - p.elapsed if c.max_time else math.inf
            finishing = self.fraction_done() >= 1.0 or time_left <= last_eval_seconds + self.final_extra_seconds()
            if p.step % c.eval_every == 0 or finishing:
                self.finishing = finishing
                stop = self._evaluate(window_losses)
                last_eval_seconds = time.perf_counter() - clock
                p.elapsed += last_eval_seconds
                clock = time.perf_counter()
                window_losses.clear()
                if stop:
                    self.callbacks.on_message(
                        f"stopping early: validation has not improved for {c.patience} evaluations"
                    )
                if stop or finishing:
                    self.finish()
                    return
        if self._interrupted:
            raise Interrupted(self.interrupted())
        self.finish()  # a resumed run whose budget was already spent

    def _evaluate(self, train_losses: list[float]) -> bool:
        """Validate and record the loss. True when patience has run out."""
        p = self.progress
        started = time.perf_counter()
        val_loss = self.world.agree_max([self.validate()])[0]
        eval_seconds = time.perf_counter() - started
        improved = val_loss < p.best_val_loss
        p.last_val_loss = val_loss
        if improved:
            p.best_val_loss = val_loss
            p.evals_without_improvement = 0
        else:
            p.evals_without_improvement += 1
        self.evaluated(improved, train_losses, eval_seconds)
        return bool(self.config.patience) and p.evals_without_improvement >= self.config.patience

    def _catch_interrupts(self) -> Any:
        """Ctrl-C finishes the current step, then saves; further Ctrl-Cs are ignored meanwhile."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: object) -> None:
            self.request_stop()

        return signal.signal(signal.SIGINT, handler)
