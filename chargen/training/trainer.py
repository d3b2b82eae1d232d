"""Training a language model: streams of text, carried hidden state, bits per character, and
best/last checkpoints that a run can resume from. The loop itself is chargen.training.loop's."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from chargen.checkpoint import load_checkpoint, save_checkpoint
from chargen.config import SampleConfig, TrainConfig, to_dict
from chargen.data.batches import Cursor, Dataset, EvalStreams, StreamBatches
from chargen.data.tokenizers import Tokenizer
from chargen.device import autocast
from chargen.generation.sampler import Sampler
from chargen.model import CharLM, State, detach_state
from chargen.model.dropout import Masks
from chargen.training.distributed import World
from chargen.training.evalpart import EvalPart, StepTimer, Validation, time_step
from chargen.training.events import Callbacks, EvalEvent
from chargen.training.loop import Interrupted, Progress, TrainingLoop, lr_at
from chargen.training.shape import Choice

__all__ = ["Interrupted", "Trainer", "last_checkpoint_path", "lr_at"]


def _checkpoint_paths(out: Path) -> tuple[Path, Path, Path]:
    """best, last and the metrics log, side by side."""
    return out, out.with_name(f"{out.stem}.last{out.suffix}"), out.with_name(f"{out.stem}.metrics.jsonl")


def last_checkpoint_path(out: Path) -> Path:
    return _checkpoint_paths(out)[1]


class _Scorer(nn.Module):
    """The loss as a module's forward, the call DDP hooks to average gradients."""

    def __init__(self, model: CharLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor, targets: Tensor, state: State) -> tuple[Tensor, State]:
        return self.model.nll(ids, targets, state)


class Trainer(TrainingLoop):
    """With `out`, the best model is saved there and the latest state beside it (for --resume);
    with `out=None` nothing is written (a classifier trains its language models that way). The best
    weights are kept in `best_weights` either way."""

    def __init__(
        self,
        model: CharLM,
        tokenizer: Tokenizer,
        data: Dataset,
        config: TrainConfig,
        out: Path | None,
        device: torch.device,
        dtype: torch.dtype | None,
        callbacks: Callbacks | None = None,
        resume: dict[str, Any] | None = None,
        world: World | None = None,
        step_timer: StepTimer = time_step,
    ) -> None:
        super().__init__(model, config, device, dtype, callbacks, world)
        self.tokenizer = tokenizer
        self.data = data
        self.out = out
        self.best_path, self.last_path, self.metrics_path = _checkpoint_paths(out) if out else (None, None, None)
        self.best_weights: dict[str, Tensor] | None = None
        self.batches = StreamBatches(data.train_ids, config.batch_size, config.seq_len)
        self.rows = self.world.rows(config.batch_size)  # this rank's streams
        self.local_batch = self.rows.stop - self.rows.start
        self.scorer = self.world.wrap(_Scorer(model), device)
        self.validation = Validation(config, data, tokenizer, lambda streams: self._measure(streams, step_timer))
        self.config = config = self.validation.config
        self._whole_bpc = math.nan  # of the whole tail, when the last evaluation read it
        self._eval_seconds = 0.0
        self.tokens_per_char = len(data.train_ids) / data.train_chars
        self.state: State | None = None
        self._next_state: State | None = None
        self.history: list[dict[str, float]] = []
        self.shape_choice: Choice | None = None  # set by chargen.training.run when it chose the shape
        if resume is not None:
            self._restore(resume)
        else:
            torch.manual_seed(config.seed)
        if self.world.rank:  # off the CPU, dropout draws from torch's generator: ranks' rows must differ
            torch.manual_seed(torch.initial_seed() + self.world.rank)

    # --- one window of the streams ------------------------------------------------------------
    def batch_loss(self) -> Tensor:
        x, y, cursor, new_epoch = self.batches.window(self.progress.cursor)
        x, y = x[self.rows], y[self.rows]
        if new_epoch or self.state is None:
            self.state = self.model.initial_state(self.local_batch, self.device)
        # This step's dropout masks, keyed by seed and step: the ranks together draw what one process
        # draws, and a resumed run what it would have (chargen.model.dropout.Masks).
        self.model.masks = Masks.keyed(self.config.seed, self.progress.step, self.rows, self.config.batch_size)
        with autocast(self.device, self.dtype):
            token_nll, self._next_state = self.scorer(x.to(self.device), y.to(self.device), self.state)
        self.progress.cursor = cursor
        return token_nll.mean()

    def after_update(self, finite: bool) -> None:
        # A non-finite state would poison every later window.
        self.state = detach_state(self._next_state) if finite and self._next_state is not None else None
        self._next_state = None
        self.model.masks = None

    def epoch_progress(self) -> float:
        return self.batches.epoch_progress(self.progress.cursor)

    def chars_per_step(self) -> float:
        return self.config.batch_size * self.config.seq_len / self.tokens_per_char

    def train_bpc(self, losses: list[float]) -> float:
        return self._bpc(losses)

    def interrupted(self) -> str:
        step = self.progress.step
        if self.last_path is None:
            return f"interrupted at step {step}"
        self._save(self.last_path, resume=True)
        return f"interrupted at step {step}; saved {self.last_path} (continue with --resume)"

    def _bpc(self, losses: list[float]) -> float:
        if not losses:
            return math.nan
        return sum(losses) / len(losses) * self.tokens_per_char / math.log(2)

    def _measure(self, streams: EvalStreams, step_timer: StepTimer) -> float:
        return self.world.agree_max([step_timer(self.model, streams, self.device, self.dtype)])[0]

    @property
    def eval_part(self) -> EvalPart:
        return self.validation.part

    def validation_bpc(self) -> float:
        """Of the whole validation tail."""
        return self.validation.whole(self.model, self.device, self.dtype)

    def validate(self) -> float:
        """Of the run's part of the tail; the last evaluation reads all of it, keeping both figures."""
        part_bpc, self._whole_bpc = self.validation.read(self.model, self.device, self.dtype, whole=self.finishing)
        return part_bpc

    def final_extra_seconds(self) -> float:
        return self._eval_seconds * (self.validation.whole_costs() - 1)

    def finish(self) -> None:
        """The run's result is the best model's figure on the whole tail: from the last evaluation's
        reading when that model is the best, else from one more reading of the best weights."""
        p = self.progress
        if math.isfinite(p.result_val_loss):
            return
        if self.eval_part.per_row is None:
            p.result_val_loss = p.best_val_loss
        else:
            weights = self.best_weights
            if weights is None and self.best_path is not None and self.best_path.exists():
                weights = load_checkpoint(self.best_path)["model"]
            if weights is None:
                return
            best = copy.deepcopy(self.model)
            best.load_state_dict(weights)
            p.result_val_loss = self.world.agree_max([self.validation.whole(best, self.device, self.dtype)])[0]
        if self.best_path is not None and self.world.is_main:
            payload = load_checkpoint(self.best_path)
            payload["metrics"]["result_bpc"] = p.result_val_loss
            save_checkpoint(self.best_path, payload)
        if self.last_path is not None:
            self._save(self.last_path, resume=True)

    def evaluated(self, improved: bool, train_losses: list[float], eval_seconds: float) -> None:
        """Record the evaluation, save last (and best if improved), and show a sample."""
        p = self.progress
        sample = self._sample() if self.config.sample_chars and self.world.is_main else ""
        event = EvalEvent(
            p.step,
            self.epoch_progress(),
            self._bpc(train_losses),
            p.last_val_loss,
            p.best_val_loss,
            improved,
            eval_seconds,
            p.elapsed,
            sample,
        )
        self._eval_seconds = eval_seconds
        if self.finishing and improved:
            p.result_val_loss = self._whole_bpc
        record = self._record(event)
        if improved:
            self._keep_best()
        if self.last_path is not None:
            self._save(self.last_path, resume=True)
        if self.metrics_path is not None and self.world.is_main:  # after the saves, which create the folder
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        self.callbacks.on_eval(event)

    def _keep_best(self) -> None:
        if self.best_path is not None:
            self._save(self.best_path, resume=False)
        self.best_weights = copy.deepcopy(self.model.state_dict())

    def _sample(self) -> str:
        # The training loop's thread count already follows the load.
        sampler = Sampler(self.model, self.tokenizer, self.device, share_cores=False)
        config = SampleConfig(length=self.config.sample_chars, seed=self.progress.step)
        text = sampler.generate([""], config)[0]
        self.model.train()
        return text

    def _record(self, event: EvalEvent) -> dict[str, float]:
        """The evaluation as a record of the history every checkpoint carries (so a single shared
        file still has its training curve); the metrics log gets the same record as a line."""
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
        self.history.append(record)
        return record

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
                "epoch": self.epoch_progress(),
                "val_bpc": p.last_val_loss,
                "best_val_bpc": p.best_val_loss,
                "eval_chars": self.eval_part.chars,  # the figures above read this much of the tail
                "val_chars": self.data.val_chars,
                "result_bpc": p.result_val_loss,  # the best model's, on the whole tail; NaN until the run ends
                "elapsed": p.elapsed,
                "tokens_per_char": self.tokens_per_char,
            },
            "corpus": dict(self.data.info),
            "history": list(self.history),
        }
        if resume:
            payload["resume"] = {
                "optimizer": self.optimizer.state_dict(),
                "step": p.step,
                "epoch": p.cursor.epoch,
                "offset": p.cursor.offset,
                "elapsed": p.elapsed,
                "best_val_bpc": p.best_val_loss,
                "last_val_bpc": p.last_val_loss,
                "evals_without_improvement": p.evals_without_improvement,
                "rng": torch.get_rng_state(),
                "hidden": list(self.world.gather_rows(self.state)) if self.state is not None else [],
            }
        return payload

    def _save(self, path: Path, resume: bool) -> None:
        """Every rank takes part (the hidden state is gathered); rank 0 alone writes."""
        payload = self.payload(resume)
        if self.world.is_main:
            save_checkpoint(path, payload)

    def _restore(self, payload: dict[str, Any]) -> None:
        r = payload["resume"]
        self.optimizer.load_state_dict(r["optimizer"])
        self.progress = Progress(
            step=r["step"],
            cursor=Cursor(r["epoch"], r["offset"]),
            elapsed=r["elapsed"],
            best_val_loss=r["best_val_bpc"],
            last_val_loss=r["last_val_bpc"],
            evals_without_improvement=r["evals_without_improvement"],
        )
        torch.set_rng_state(r["rng"])
        self.state = tuple(s[:, self.rows].to(self.device) for s in r["hidden"]) or None
        self.history = list(payload.get("history", []))  # checkpoints before the history have none
