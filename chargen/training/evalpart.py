"""Which part of the validation tail the evaluations during a run read.

The tail itself never depends on the machine (bpc stays comparable between machines), but reading
all of it costs a slow CPU 10-30 s per evaluation. So at a run's first start the model is timed on
the tail for a moment and evaluations read as much as fits EVAL_SECONDS here: the first targets of
each row the whole reading uses (evenly spaced contiguous spans, always the same positions). The
choice is a setting of the run (TrainConfig.eval_chars), stored in its checkpoints, so a resume on
another machine reads the same part. The run's result is one reading of the whole tail at the end.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from chargen.analysis.evaluate import EVAL_BURN_IN, characters_scored, eval_streams, read_bits, total_bits
from chargen.config import EVAL_ALL, EVAL_AUTO, TrainConfig
from chargen.data.batches import Dataset, EvalStreams
from chargen.data.tokenizers import Tokenizer
from chargen.device import autocast
from chargen.model import CharLM

EVAL_SECONDS = 3.0  # an evaluation's reading during a run, at most, where the whole tail takes longer
TIMED_STEPS = 192  # time steps of each timed read: ~0.25 s each on an AVX2-only CPU (64-step reads
# overstated a 512-step window's cost per step by ~1.5x: the input and output layers amortise less)
WARM_STEPS = 32  # ...after one read this long (its first call sets oneDNN up)

# Seconds per time step of the reading (all rows at once) on this machine: injectable, so a test
# can pose as a machine of any speed.
StepTimer = Callable[[CharLM, EvalStreams, torch.device, "torch.dtype | None"], float]


@torch.inference_mode()
def time_step(model: CharLM, streams: EvalStreams, device: torch.device, dtype: torch.dtype | None) -> float:
    """The faster of two timed reads of TIMED_STEPS steps, after one that warms up."""
    was_training = model.training
    model.eval()
    x, y, _ = next(streams.windows(TIMED_STEPS))
    x, y = x.to(device), y.to(device)
    with autocast(device, dtype):
        model.nll(x[:, :WARM_STEPS], y[:, :WARM_STEPS])
        best = math.inf
        for _ in range(2):
            started = time.perf_counter()
            model.nll(x, y)
            best = min(best, (time.perf_counter() - started) / x.shape[1])
    model.train(was_training)
    return best


def choose_chars(streams: EvalStreams, tokens_per_char: float, seconds_per_step: float) -> int:
    """The characters an evaluation can read in EVAL_SECONDS (EVAL_ALL where the whole tail fits),
    rounded to a thousand; each row still scores at least as much as it reads to warm up."""
    if streams.length * seconds_per_step <= EVAL_SECONDS:
        return EVAL_ALL
    per_row = max(EVAL_BURN_IN, int(EVAL_SECONDS / seconds_per_step) - EVAL_BURN_IN)
    chars = per_row * len(streams.spans) / tokens_per_char
    return max(1000, round(chars, -3))


@dataclass(frozen=True)
class EvalPart:
    """What evaluations during a run read: `per_row` targets of each row (None: everything)."""

    per_row: int | None
    chars: int  # characters those targets stand for
    all_chars: int

    @classmethod
    def of(cls, streams: EvalStreams, eval_chars: int, tokenizer: Tokenizer, all_chars: int) -> EvalPart:
        """The part `eval_chars` (a setting already chosen: not EVAL_AUTO) names, in targets per row."""
        if eval_chars == EVAL_AUTO:
            raise ValueError("the evaluation part has not been chosen")
        tokens_per_char = (len(streams.ids) - 1) / all_chars
        per_row = math.ceil(eval_chars * tokens_per_char / len(streams.spans))
        if eval_chars == EVAL_ALL or all(last - s - warm <= per_row for s, last, warm in streams.spans):
            return cls(None, all_chars, all_chars)
        part = streams.limited(per_row)
        chars = sum(characters_scored(tokenizer, part.ids[s + warm : last + 1]) for s, last, warm in part.spans)
        return cls(per_row, chars, all_chars)

    def describe(self, rows: int, chosen: bool) -> str:
        """One line for the run's start."""
        if self.per_row is None:
            return f"evaluations read the whole validation tail ({self.all_chars:,} characters)"
        why = f"chosen to take ~{EVAL_SECONDS:g} s here" if chosen else "as set"
        return (
            f"evaluations read {self.chars:,} of the {self.all_chars:,} validation characters "
            f"({rows} evenly spaced spans; {why}, --eval-chars to change); the result reads them all"
        )


class Validation:
    """A run's validation tail and the part of it its evaluations read, chosen on first use.
    `measure` gives this machine's (every rank's slowest) seconds per time step of the reading."""

    def __init__(
        self, config: TrainConfig, data: Dataset, tokenizer: Tokenizer, measure: Callable[[EvalStreams], float]
    ) -> None:
        self.streams = eval_streams(data.val_ids)
        self.chars = data.val_chars
        self.chosen = config.eval_chars == EVAL_AUTO
        if self.chosen:
            eval_chars = EVAL_ALL
            if self.streams.length > 2 * TIMED_STEPS:
                tokens_per_char = (len(data.val_ids) - 1) / data.val_chars
                eval_chars = choose_chars(self.streams, tokens_per_char, measure(self.streams))
            config = dataclasses.replace(config, eval_chars=eval_chars)
        self.config = config  # with the part chosen: the setting a checkpoint keeps
        self.part = EvalPart.of(self.streams, config.eval_chars, tokenizer, data.val_chars)
        self.part_streams = self.streams.limited(self.part.per_row or 0)

    def describe(self) -> str:
        return self.part.describe(len(self.streams.spans), self.chosen)

    def whole(self, model: CharLM, device: torch.device, dtype: torch.dtype | None) -> float:
        """Bits per character of the whole tail."""
        return total_bits(model, self.streams, device, dtype) / self.chars

    def read(self, model: CharLM, device: torch.device, dtype: torch.dtype | None, whole: bool) -> tuple[float, float]:
        """The part's bits per character and, with `whole` (or where the part is everything), the
        whole tail's (else NaN): both from one reading."""
        per_row = self.part.per_row
        if per_row is None:
            bpc = self.whole(model, device, dtype)
            return bpc, bpc
        if whole:
            bits, within = read_bits(model, self.streams, device, dtype, within=per_row)
            return within / self.part.chars, bits / self.chars
        return total_bits(model, self.part_streams, device, dtype) / self.part.chars, math.nan

    def whole_costs(self) -> float:
        """How many times a reading of the part the whole tail takes."""
        return self.streams.length / self.part_streams.length if self.part.per_row is not None else 1.0
