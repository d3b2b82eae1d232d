"""Training on several processes (torchrun + DistributedDataParallel), kept behind a few hooks.

A run is a `World` of ranks read from the environment torchrun sets. One process is a world of
one, and then every hook here does nothing, so the training loop has a single code path.

What makes ranks train exactly like one process with the same global batch:
- the batch's B streams are global; rank r owns the contiguous block of rows `rows(B)` and the
  hidden state of those rows, so text order and carried state are those of one process;
- each rank's loss is the mean over its rows, and DDP averages gradients over equal blocks,
  which is the mean over the whole batch;
- the clock is agreed every step (the largest elapsed time of any rank), so time budgets, the
  learning-rate schedule and stopping (budget, patience, Ctrl-C) are the same on every rank.
Rank 0 alone prints, logs and writes checkpoints; a checkpoint holds the global hidden state,
so it resumes on any number of ranks that divides the batch, or in one process.
"""

from __future__ import annotations

import datetime
import gc
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from chargen.config import DIST_TIMEOUT
from chargen.errors import ChargenError, ConfigError
from chargen.training.failures import Failures, first_line


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @classmethod
    def from_env(cls) -> World:
        env = os.environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return cls()
        return cls(
            int(env["RANK"]),
            int(env["WORLD_SIZE"]),
            int(env.get("LOCAL_RANK", 0)),
            int(env.get("LOCAL_WORLD_SIZE", 1)),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def attempt(self) -> int:
        """torchrun counts restarts of the group (0 for the first attempt)."""
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

    @property
    def restarted(self) -> bool:
        """A restarted run continues from its checkpoint."""
        return self.attempt > 0

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per local rank."""
        if requested.type == "cuda" and self.size > 1:
            return torch.device("cuda", self.local_rank)
        return requested

    def rows(self, batch_size: int) -> slice:
        """This rank's contiguous block of the global batch's streams."""
        if batch_size % self.size:
            raise ConfigError(
                f"--batch-size {batch_size} does not divide among {self.size} ranks; use a multiple of {self.size}"
            )
        share = batch_size // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    def wrap(self, scorer: nn.Module, device: torch.device) -> nn.Module:
        """DDP around the module whose forward the loss goes through (it averages gradients)."""
        if self.size == 1:
            return scorer
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(scorer, device_ids=ids)

    def agree_max(self, values: list[float]) -> list[float]:
        """The largest of each value over all ranks (elapsed time, a stop request, ...)."""
        if self.size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return t.tolist()

    def gather_rows(self, tensors: tuple[Tensor, ...], dim: int = 1) -> tuple[Tensor, ...]:
        """Every rank's block of rows, joined in rank order (on the CPU, for a checkpoint)."""
        if self.size == 1:
            return tuple(t.detach().cpu() for t in tensors)
        joined = []
        for t in tensors:
            parts = [torch.empty_like(t) for _ in range(self.size)]
            torch.distributed.all_gather(parts, t.detach().contiguous())
            joined.append(torch.cat(parts, dim=dim).cpu())
        return tuple(joined)


@contextmanager
def process_group(world: World, device: str, timeout: float | None = None) -> Iterator[None]:
    """Join the group for the duration of a run (gloo on the CPU, NCCL on CUDA). A rank that fails
    ends every rank, with one line from one of them (chargen.training.failures)."""
    if world.size == 1:
        yield
        return
    import torch.distributed as dist

    cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(world.local_rank)
    timeout = timeout or DIST_TIMEOUT
    wait = datetime.timedelta(seconds=timeout)
    try:
        # torchrun's store outlives a failed attempt: without a fresh namespace, a restarted group
        # would read the dead ranks' addresses and wait on them until the timeout.
        shared, _, _ = next(dist.rendezvous("env://", timeout=wait))
        store = dist.PrefixStore(f"chargen/attempt-{world.attempt}/", shared)
        dist.init_process_group(
            "nccl" if cuda else "gloo", store=store, rank=world.rank, world_size=world.size, timeout=wait
        )
    except (dist.DistError, RuntimeError, ValueError) as err:
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        raise ChargenError(
            f"rank {world.rank} could not join its group of {world.size} at {where} within {timeout:g}s "
            f"({first_line(err)}); check the rendezvous endpoint, or raise --dist-timeout"
        ) from None
    failures = Failures(store, world.rank, world.size)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, failures.terminated) if main else None
    try:
        yield
        # A rank that tore its connections down while rank 0 still wrote the last checkpoint
        # sometimes aborted in gloo's teardown ("terminate called without an active exception").
        dist.barrier()
        gc.collect()  # what the run left in reference cycles must not outlive the group it uses
    except BaseException as err:  # settle decides; a bug keeps its traceback
        settled = failures.settle(err)
        if settled is err:
            raise
        raise settled from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        dist.destroy_process_group()
