"""Which new runs get their shape chosen (chargen.training.shape), and how fast each candidate
trains on the machine at hand: a few real training steps of each, timed, in a bounded share of
the run's own time budget."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from chargen.config import TrainConfig
from chargen.training.distributed import World
from chargen.training.loop import TrainingLoop
from chargen.training.shape import CURVES, Shape

# A candidate's training steps per second on this machine (tests inject their own).
RateMeter = Callable[[Shape], float]

# Measuring takes at most this share of the time budget, and at most MEASURE_CAP seconds: the
# candidates are timed cheapest first, and those not reached in time are not candidates.
MEASURE_SHARE = 0.04
MEASURE_CAP = 30.0
# Each candidate: one warm-up step (oneDNN builds its kernels), then steps for at least this long.
TIMED_SECONDS = 0.3

SHAPE_OPTIONS = ("layers", "hidden", "batch_size", "seq_len", "dropout", "weight_drop")


def candidates(
    model: Mapping[str, Any], train: Mapping[str, Any], config: TrainConfig, world: World, device: torch.device
) -> tuple[Shape, ...]:
    """The shapes a new run may be given, from the options the user set (`model`, `train`):
    none unless time is its only budget and it trains an LSTM in one process on the CPU (the
    curves were measured there); of the rest, those agreeing with every shape option set. Fewer
    than two left: no choice, the options set and the defaults for the others."""
    if not config.max_time or config.max_steps or config.max_epochs:
        return ()
    if device.type != "cpu" or world.size > 1 or model.get("cell", "lstm") != "lstm":
        return ()
    given = {k: v for k, v in {**model, **train}.items() if k in SHAPE_OPTIONS}
    shapes = tuple(c.shape for c in CURVES if all(getattr(c.shape, k) == v for k, v in given.items()))
    return shapes if len(shapes) > 1 else ()


def measure_limit(budget: float) -> float:
    return min(MEASURE_SHARE * budget, MEASURE_CAP)


def cost(shape: Shape) -> tuple[int, str]:
    """Cheapest first (the recurrent matmuls dominate a step), in a fixed order."""
    return shape.batch_size * shape.seq_len * shape.layers * shape.hidden**2, str(shape)


def measure(shapes: tuple[Shape, ...], meter: RateMeter, limit: float) -> tuple[dict[Shape, float], float]:
    """Steps/s of each shape, cheapest first, until `limit` seconds are spent; and the seconds spent.
    Shapes that differ only in their regularisation are timed once, as `Shape.timed`."""
    started = time.perf_counter()
    timed: dict[Shape, float] = {}
    for shape in sorted({s.timed for s in shapes}, key=cost):
        if timed and time.perf_counter() - started > limit:
            break
        timed[shape] = meter(shape)
    rates = {shape: timed[shape.timed] for shape in shapes if shape.timed in timed}
    return rates, time.perf_counter() - started


def step_rate(make_trainer: Callable[[Shape], TrainingLoop]) -> RateMeter:
    """Steps/s of real training steps of each shape, on this run's data, device and threads."""

    def rate(shape: Shape) -> float:
        trainer = make_trainer(shape)
        trainer.train_step()
        steps, started = 0, time.perf_counter()
        while steps < 1 or time.perf_counter() - started < TIMED_SECONDS:
            trainer.train_step()
            steps += 1
        return steps / (time.perf_counter() - started)

    return rate
