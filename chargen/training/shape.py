"""The model shape a time budget buys the most from: which candidate reaches the lowest validation
bpc in the steps the machine can make of it. A candidate is a network and batch shape with its
regularisation: dropout slows the first few readings of a corpus and pays off only after many.
How low a shape gets after N steps does not depend on the machine (CURVES, measured once); how
many steps a budget buys does (measured on the user's machine by chargen.training.shape_rates)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from itertools import pairwise

from chargen.config import ModelConfig, default, format_duration

DROPOUT: float = default(ModelConfig, "dropout")
WEIGHT_DROP: float = default(ModelConfig, "weight_drop")


@dataclass(frozen=True)
class Shape:
    """What the choice sets: the network's layers and hidden size, the batch's streams and window,
    and the dropout between layers and of the recurrent weights."""

    layers: int
    hidden: int
    batch_size: int = 64
    seq_len: int = 64
    dropout: float = DROPOUT
    weight_drop: float = WEIGHT_DROP

    def __str__(self) -> str:
        text = f"{self.layers}×{self.hidden} batch {self.batch_size}×{self.seq_len}"
        if (self.dropout, self.weight_drop) == (DROPOUT, WEIGHT_DROP):
            return text
        if self.dropout == self.weight_drop == 0:
            return text + " no dropout"
        return text + f" dropout {self.dropout:g} weight drop {self.weight_drop:g}"

    @property
    def timed(self) -> Shape:
        """The shape whose steps/s stand for this one's: regularisation costs next to nothing per step."""
        return replace(self, dropout=DROPOUT, weight_drop=WEIGHT_DROP)


@dataclass(frozen=True)
class Curve:
    """Validation bpc a shape reached after a budget of steps (its learning rate decaying over
    exactly that budget), at rising step counts."""

    shape: Shape
    points: tuple[tuple[int, float], ...]


# Validation bpc on tinyshakespeare (the whole validation tail) after N steps, each a `--max-steps N`
# run of `python benchmarks/shapes.py [--options "--dropout 0 --weight-drop 0"]` (1 thread; AMD
# EPYC family 25 model 17, 2026-12-07), except the default's last two points: 3-minute and
# 10-minute `python benchmarks/quality.py` runs of the same defaults (Intel Xeon, 2026-12-05),
# whose schedules decay over their steps as well. All in docs/PERFORMANCE.md, "Shapes for a time
# budget". The first is the default shape. Without dropout a shape learns faster for the first
# ten readings of the corpus (245 steps of 64×64 read tinyshakespeare once).
CURVES: tuple[Curve, ...] = (
    Curve(Shape(2, 512), ((150, 2.701), (300, 2.369), (600, 2.175), (1241, 2.092), (3965, 1.990))),
    Curve(Shape(1, 512), ((150, 2.671), (300, 2.391), (600, 2.216), (1200, 2.112), (2400, 2.053), (4800, 2.004))),
    Curve(
        Shape(1, 512, dropout=0.0, weight_drop=0.0),
        ((150, 2.635), (300, 2.354), (600, 2.174), (1200, 2.077), (2400, 2.033)),
    ),
    Curve(Shape(1, 256), ((150, 2.800), (300, 2.557), (600, 2.376), (1200, 2.262), (2400, 2.187))),
    Curve(Shape(1, 256, dropout=0.0, weight_drop=0.0), ((150, 2.769), (300, 2.505), (600, 2.320), (1200, 2.200))),
)
DEFAULT = CURVES[0].shape
# Training tokens of the corpus CURVES were measured on (tinyshakespeare's first 90%).
CURVE_TOKENS = 1_003_854

# A shape other than the default must be predicted this much better: the run-to-run spread of a
# 3-minute run is about ±0.01 bpc.
MARGIN = 0.01
# The share of a time budget that goes to training steps rather than evaluations.
TRAINING_SHARE = 0.93


def predicted_bpc(curve: Curve, steps: float) -> float:
    """Linear in log(steps) between measured budgets, the first segment's slope below them, and
    flat above the last (a conservative guess: beyond the table the default shape stays)."""
    points = curve.points
    if steps >= points[-1][0]:
        return points[-1][1]
    (n0, b0), (n1, b1) = next(pair for pair in pairwise(points) if steps < pair[1][0])
    slope = (b1 - b0) / (math.log(n1) - math.log(n0))
    return b0 + slope * (math.log(max(steps, 1.0)) - math.log(n0))


@dataclass(frozen=True)
class Prediction:
    shape: Shape
    rate: float  # steps/s measured
    steps: float  # predicted in the time left
    bpc: float


@dataclass(frozen=True)
class Choice:
    shape: Shape
    predictions: tuple[Prediction, ...]  # of every shape measured, best first
    seconds: float  # spent measuring, counted in the budget

    def describe(self, budget: float) -> str:
        """The one line a run prints about its shape."""
        best = self.predictions[0]
        line = f"shape {best.shape} for this CPU and {format_duration(budget)}: "
        line += f"~{best.steps:.0f} steps, predicted {best.bpc:.2f} bpc"
        default = next((p for p in self.predictions if p.shape == DEFAULT), None)
        if default is not None and default.shape != best.shape:
            line += f" (default {DEFAULT.layers}×{DEFAULT.hidden}: ~{default.steps:.0f} steps, {default.bpc:.2f})"
        yourself = "set --layers/--hidden/--dropout/--weight-drop to choose yourself"
        return line + f"; measured in {self.seconds:.1f}s of the budget ({yourself})"


def within_reach(curve: Curve, steps: float, corpus_tokens: int) -> bool:
    """Whether `steps` read a corpus of `corpus_tokens` training tokens at most as many times as
    the curve's last point read the curves' corpus: how far a shape regularised less than the
    default is trusted (it overfits a smaller corpus sooner). The others are trusted at any length."""
    shape = curve.shape
    if shape.dropout >= DROPOUT and shape.weight_drop >= WEIGHT_DROP:
        return True
    return steps * CURVE_TOKENS <= curve.points[-1][0] * corpus_tokens


def choose(
    rates: Mapping[Shape, float],
    seconds_left: float,
    measured_in: float = 0.0,
    curves: tuple[Curve, ...] = CURVES,
    corpus_tokens: int = CURVE_TOKENS,
) -> Choice:
    """The shape predicted lowest after `seconds_left` of training at the measured steps/s; the
    default unless another is better by MARGIN. Shapes without a rate are not candidates, nor are
    shapes out of reach of their curve on a corpus of `corpus_tokens` (unless none is within it)."""
    by_shape = {c.shape: c for c in curves}
    every = [
        Prediction(shape, rate, steps, predicted_bpc(by_shape[shape], steps))
        for shape, rate in rates.items()
        for steps in [rate * max(seconds_left, 0.0) * TRAINING_SHARE]
    ]
    reachable = [p for p in every if within_reach(by_shape[p.shape], p.steps, corpus_tokens)]
    predictions = sorted(reachable or every, key=lambda p: p.bpc)
    default = next((p for p in predictions if p.shape == DEFAULT), None)
    if default is not None and predictions[0].bpc > default.bpc - MARGIN:
        predictions.remove(default)
        predictions.insert(0, default)
    return Choice(predictions[0].shape, tuple(predictions), measured_in)
