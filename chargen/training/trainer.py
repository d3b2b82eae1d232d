"""The training loop. It reports through callbacks and knows nothing of terminals or rich."""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from chargen.analysis.evaluate import EVAL_BURN_IN, EVAL_ROWS, total_bits
from chargen.checkpoint import save_checkpoint
from chargen.config import SampleConfig, TrainConfig, to_dict
from chargen.data.batches import Cursor, Dataset, EvalStreams, StreamBatches
from chargen.data.tokenizers import Tokenizer
from chargen.device import autocast
from chargen.errors import ChargenError, TrainingDiverged
from chargen.generation.sampler import Sampler
from chargen.model import CharLM, State, detach_state
from chargen.training.events import Callbacks, EvalEvent, StepEvent

MAX_NONFINITE_IN_A_ROW = 5


class Interrupted(ChargenError):
    exit_code = 130


@dataclass
class Progress:
    """Everything about a run's position that a resume must restore."""

    step: int = 0
    cursor: Cursor = field(default_factory=Cursor)
    elapsed: float = 0.0
    best_val_bpc: float = math.inf
    last_val_bpc: float = math.nan
    evals_without_improvement: int = 0
    nonfinite_steps: int = 0


def lr_at(config: TrainConfig, step: int, fraction_done: float) -> float:
    """Linear warmup over steps, then cosine decay over the budget's fraction used, so that when
    the budget is time the decay ends when the time does."""
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    floor = config.lr * config.min_lr_frac
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, fraction_done)))
    return warm * (floor + (config.lr - floor) * cosine)


def _checkpoint_paths(out: Path) -> tuple[Path, Path, Path]:
    """best, last and the metrics log, side by side."""
    return out, out.with_name(f"{out.stem}.last{out.suffix}"), out.with_name(f"{out.stem}.metrics.jsonl")


def last_checkpoint_path(out: Path) -> Path:
    return _checkpoint_paths(out)[1]


class Trainer:
    def __init__(
        self,
        model: CharLM,
        tokenizer: Tokenizer,
        data: Dataset,
        config: TrainConfig,
        out: Path,
        device: torch.device,
        dtype: torch.dtype | None,
        callbacks: Callbacks | None = None,
        resume: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.to(device)
        self.tokenizer = tokenizer
        self.data = data
        self.config = config
        self.device = device
        self.dtype = dtype
        self.callbacks = callbacks or Callbacks()
        self.best_path, self.last_path, self.metrics_path = _checkpoint_paths(out)
        self.batches = StreamBatches(data.train_ids, config.batch_size, config.seq_len)
        self.val_streams = EvalStreams.build(data.val_ids, EVAL_ROWS, EVAL_BURN_IN)
        self.tokens_per_char = len(data.train_ids) / data.train_chars
        self.optimizer = self._make_optimizer()
        self.progress = Progress()
        self.state: State | None = None
        self._interrupted = False
        if resume is not None:
            self._restore(resume)
        else:
            torch.manual_seed(config.seed)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        """Weight decay on matrices only; biases and the embedding table are not decayed."""
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (decay if p.dim() >= 2 and not name.startswith("embed") else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        fused = self.device.type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=self.config.lr, betas=(0.9, 0.99), fused=fused)

    # --- budget -----------------------------------------------------------------------------
    def fraction_done(self) -> float:
        c, p = self.config, self.progress
        parts = [0.0]
        if c.max_steps:
            parts.append(p.step / c.max_steps)
        if c.max_epochs:
            parts.append(self.batches.epoch_progress(p.cursor) / c.max_epochs)
        if c.max_time:
            parts.append(p.elapsed / c.max_time)
        return max(parts)

    # --- the loop ---------------------------------------------------------------------------
    def train_step(self) -> float:
        """One window: forward, backward, clip, update. Returns the mean loss in nats per token."""
        x, y, cursor, new_epoch = self.batches.window(self.progress.cursor)
        if new_epoch or self.state is None:
            self.state = self.model.initial_state(self.config.batch_size, self.device)
        lr = lr_at(self.config, self.progress.step, self.fraction_done())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        with autocast(self.device, self.dtype):
            token_nll, state = self.model.nll(x.to(self.device), y.to(self.device), self.state)
        loss = token_nll.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        value = float(loss.detach())
        if math.isfinite(value) and math.isfinite(float(grad_norm)):
            self.optimizer.step()
            self.state = detach_state(state)
            self.progress.nonfinite_steps = 0
        else:
            self.progress.nonfinite_steps += 1
            self.state = None  # a non-finite state would poison every later window
            if self.progress.nonfinite_steps >= MAX_NONFINITE_IN_A_ROW:
                raise TrainingDiverged(
                    f"training diverged: loss was not finite {MAX_NONFINITE_IN_A_ROW} steps in a row "
                    f"at step {self.progress.step}; try a lower --lr (now {self.config.lr})"
                )
            self.callbacks.on_message(f"step {self.progress.step}: loss not finite, step skipped")
        self.progress.cursor = cursor
        self.progress.step += 1
        return value

    def request_stop(self) -> None:
        """Finish the current step, save a resumable checkpoint, then raise Interrupted."""
        self._interrupted = True

    def run(self) -> Progress:
        """Train until a budget is used or patience runs out; save best and last checkpoints."""
        previous = self._catch_interrupts()
        try:
            self._loop()
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return self.progress

    def _loop(self) -> None:
        c, p = self.config, self.progress
        chars_per_step = c.batch_size * c.seq_len / self.tokens_per_char
        window_losses: list[float] = []
        last_eval_seconds = 0.0
        clock = time.perf_counter()
        rate_clock, rate_steps = clock, 0
        while self.fraction_done() < 1.0 and not self._interrupted:
            loss = self.train_step()
            if math.isfinite(loss):
                window_losses.append(loss)
            now = time.perf_counter()
            p.elapsed += now - clock
            clock = now
            rate_steps += 1
            train_bpc = self._bpc(window_losses[-50:])
            self.callbacks.on_step(
                StepEvent(
                    p.step,
                    loss,
                    self.batches.epoch_progress(p.cursor),
                    train_bpc,
                    self.optimizer.param_groups[0]["lr"],
                    rate_steps * chars_per_step / max(now - rate_clock, 1e-9),
                    p.elapsed,
                    self.fraction_done(),
                )
            )
            if now - rate_clock > 10:
                rate_clock, rate_steps = now, 0
            time_left = c.max_time - p.elapsed if c.max_time else math.inf
            finishing = self.fraction_done() >= 1.0 or time_left <= last_eval_seconds
            if p.step % c.eval_every == 0 or finishing:
                stop = self._evaluate_and_save(self._bpc(window_losses))
                last_eval_seconds = time.perf_counter() - clock
                p.elapsed += last_eval_seconds
                clock = time.perf_counter()
                window_losses.clear()
                if stop:
                    self.callbacks.on_message(
                        f"stopping early: validation has not improved for {c.patience} evaluations"
                    )
                if stop or finishing:
                    return
        if self._interrupted:
            self._save(self.last_path, resume=True)
            raise Interrupted(f"interrupted at step {p.step}; saved {self.last_path} (continue with --resume)")

    def _bpc(self, losses: list[float]) -> float:
        if not losses:
            return math.nan
        return sum(losses) / len(losses) * self.tokens_per_char / math.log(2)

    def validation_bpc(self) -> float:
        return total_bits(self.model, self.val_streams, self.device, self.dtype) / self.data.val_chars

    def _evaluate_and_save(self, train_bpc: float) -> bool:
        """Evaluate, save last (and best if improved), log. True when patience has run out."""
        p = self.progress
        started = time.perf_counter()
        val_bpc = self.validation_bpc()
        eval_seconds = time.perf_counter() - started
        improved = val_bpc < p.best_val_bpc
        p.last_val_bpc = val_bpc
        if improved:
            p.best_val_bpc = val_bpc
            p.evals_without_improvement = 0
            self._save(self.best_path, resume=False)
        else:
            p.evals_without_improvement += 1
        self._save(self.last_path, resume=True)
        sample = self._sample() if self.config.sample_chars else ""
        event = EvalEvent(
            p.step,
            self.batches.epoch_progress(p.cursor),
            train_bpc,
            val_bpc,
            p.best_val_bpc,
            improved,
            eval_seconds,
            p.elapsed,
            sample,
        )
        self._log(event)
        self.callbacks.on_eval(event)
        return bool(self.config.patience) and p.evals_without_improvement >= self.config.patience

    def _sample(self) -> str:
        sampler = Sampler(self.model, self.tokenizer, self.device)
        config = SampleConfig(length=self.config.sample_chars, temperature=0.8, seed=self.progress.step)
        text = sampler.generate([""], config)[0]
        self.model.train()
        return text

    def _log(self, event: EvalEvent) -> None:
        import json

        record = {
            "step": event.step,
            "epoch": round(event.epoch, 4),
            "train_bpc": event.train_bpc,
            "val_bpc": event.val_bpc,
            "best_val_bpc": event.best_val_bpc,
            "elapsed": round(event.elapsed, 2),
            "eval_seconds": round(event.eval_seconds, 3),
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    # --- checkpoints ------------------------------------------------------------------------
    def payload(self, resume: bool) -> dict[str, Any]:
        p = self.progress
        payload: dict[str, Any] = {
            "model_config": to_dict(self.model.config),
            "tokenizer": self.tokenizer.state(),
            "train_config": to_dict(self.config),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "metrics": {
                "step": p.step,
                "epoch": self.batches.epoch_progress(p.cursor),
                "val_bpc": p.last_val_bpc,
                "best_val_bpc": p.best_val_bpc,
                "elapsed": p.elapsed,
                "tokens_per_char": self.tokens_per_char,
            },
            "corpus": dict(self.data.info),
        }
        if resume:
            payload["resume"] = {
                "optimizer": self.optimizer.state_dict(),
                "step": p.step,
                "epoch": p.cursor.epoch,
                "offset": p.cursor.offset,
                "elapsed": p.elapsed,
                "best_val_bpc": p.best_val_bpc,
                "last_val_bpc": p.last_val_bpc,
                "evals_without_improvement": p.evals_without_improvement,
                "rng": torch.get_rng_state(),
                "hidden": [s.detach().cpu() for s in self.state] if self.state is not None else [],
            }
        return payload

    def _save(self, path: Path, resume: bool) -> None:
        save_checkpoint(path, self.payload(resume))

    def _restore(self, payload: dict[str, Any]) -> None:
        r = payload["resume"]
        self.optimizer.load_state_dict(r["optimizer"])
        self.progress = Progress(
            step=r["step"],
            cursor=Cursor(r["epoch"], r["offset"]),
            elapsed=r["elapsed"],
            best_val_bpc=r["best_val_bpc"],
            last_val_bpc=r["last_val_bpc"],
            evals_without_improvement=r["evals_without_improvement"],
        )
        torch.set_rng_state(r["rng"])
        self.state = tuple(s.to(self.device) for s in r["hidden"]) or None

    def _catch_interrupts(self) -> Any:
        """Ctrl-C finishes the current step, then saves; further Ctrl-Cs are ignored meanwhile."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: object) -> None:
            self.request_stop()

        return signal.signal(signal.SIGINT, handler)
