"""A CPU training step on several threads by rows: the batch's streams split into one group per
intra-op thread, each group's forward and backward run on a thread of its own with one intra-op
thread, and the groups' gradients summed.

Why: with two threads on one batch, oneDNN's LSTM kernels share every time step's small matrix
product (64 rows at the default shape) between the threads and meet at barriers many times per
step; the mask draws, the loss and the small products around them run on one thread. A group of
streams on a thread of its own never waits for the other, and each thread does the whole step's
work for its rows at one-thread efficiency (measured in docs/PERFORMANCE.md, "Training on
threads by rows"). The split follows torch's thread count at each step, so it follows fair
threads (chargen.threads) too; with one thread, or off the CPU, or across torchrun ranks (whose
gradients DDP averages) the step is the plain one.

Nothing learned changes: every group draws the whole batch's masks from a generator keyed as the
one-process step's and keeps its own rows (as ranks do: chargen.model.dropout.Masks), each
group's loss is its share of the batch mean, and the gradients are summed in group order, so the
step computes the whole batch's gradients to rounding and repeats exactly from a seed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from itertools import pairwise
from typing import TypeVar

import torch
from torch import Tensor

from chargen.model import CharLM, State
from chargen.model.dropout import Masks

MIN_GROUP_ROWS = 8  # below this a group's matrix products are too thin to gain from a thread of their own

T = TypeVar("T")
_pool: tuple[ThreadPoolExecutor, int] | None = None  # the workers and their count


def row_groups(rows: int, threads: int) -> list[slice]:
    """Contiguous groups of `rows` streams, one per thread, sizes differing by at most one; a
    single group when there is one thread or too few rows to share."""
    groups = max(1, min(threads, rows // MIN_GROUP_ROWS))
    bounds = [rows * k // groups for k in range(groups + 1)]
    return [slice(a, b) for a, b in pairwise(bounds)]


def step_by_rows(
    model: CharLM,
    window: tuple[Tensor, Tensor, State | None],
    groups: Sequence[slice],
    masks: Callable[[slice], Masks],
    precision: Callable[[], AbstractContextManager[object]],
) -> tuple[Tensor, State]:
    """The model's loss on a window (inputs, targets (B, T), the state before it) and its
    gradients, each group of rows on a thread of its own with one intra-op thread; the gradients
    summed into the parameters' .grad. `masks(rows)` draws a group's dropout masks (rows of the
    whole batch). Returns the mean loss (detached) and the state after the window (detached)."""
    x, y, state = window
    parameters = [p for p in model.parameters() if p.requires_grad]

    def run(rows: slice) -> tuple[Tensor, Sequence[Tensor | None], State]:
        torch.set_num_threads(1)
        rows_state = tuple(s[:, rows] for s in state) if state is not None else None
        with precision():
            token_nll, next_state = model.nll(x[rows], y[rows], rows_state, masks(rows))
        loss = token_nll.sum() / y.numel()  # this group's share of the batch mean
        grads = torch.autograd.grad(loss, parameters, allow_unused=True)
        return loss.detach(), grads, tuple(s.detach() for s in next_state)

    results = _on_threads([functools.partial(run, rows) for rows in groups])
    _sum_gradients(parameters, [grads for _, grads, _ in results])
    next_state = tuple(torch.cat(parts, dim=1) for parts in zip(*(s for _, _, s in results), strict=True))
    return torch.stack([loss for loss, _, _ in results]).sum(), next_state


def _on_threads(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Each task on a thread of the pool (grown to one per task); results in task order."""
    global _pool
    if _pool is None or _pool[1] < len(tasks):
        if _pool is not None:
            _pool[0].shutdown()
        _pool = ThreadPoolExecutor(len(tasks), thread_name_prefix="chargen-rows"), len(tasks)
    threads = torch.get_num_threads()
    try:
        return [future.result() for future in [_pool[0].submit(task) for task in tasks]]
    finally:
        torch.set_num_threads(threads)  # the workers' setting also becomes torch's default for new threads


def _sum_gradients(parameters: Sequence[Tensor], per_group: Sequence[Sequence[Tensor | None]]) -> None:
    """Each parameter's .grad = its groups' gradients summed in group order (None where no group
    reached it, as a plain backward leaves it)."""
    for k, parameter in enumerate(parameters):
        parts = [grads[k] for grads in per_group if grads[k] is not None]
        total = parts[0] if parts else None
        for part in parts[1:]:
            total = total + part
        parameter.grad = total
