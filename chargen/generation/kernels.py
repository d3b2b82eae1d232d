"""Which one-token step samples fastest here: measured on first use, remembered per machine.

The fastest step is not a property of the code but of the CPU: one stream of a 2×512 LSTM
sampled 10.5k chars/s with torch's int8 matmul on an AMD EPYC without AMX, but 4.45k on an Intel
Xeon with AMX, where fbgemm's prepacked int8 product is much faster (and chargen's native step
faster still); and the best step for one stream is not the best for 64. So `auto` times each
usable step (chargen.generation.inference) for a moment, for one stream and for a batch, and
keeps the answer in the user data folder, keyed by the CPU model, the torch version, the thread
count and the model's shapes. The file is only a memo: safe to delete, and ignored (then
rewritten) when unreadable or when it lacks a candidate that runs now (the native step built
since, say).

Measuring never costs the user much: the whole choice has a budget of about a second, the native
step (likeliest fastest) goes first, and a candidate clearly slower than the best so far is
abandoned after a step or a few (torch's int8 product took ~0.3 s a step for 64 streams on an
AVX2-only AMD EPYC, family 25 model 1). A measurement taken while other processes keep the cores
busy is used and remembered as provisional: later runs use it without measuring, and it is
measured again once the machine is quiet (and the provisional answer is old enough), so neither
a busy moment's choice sticks for ever nor does every call on a busy machine pay for measuring.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from chargen.atomic import replacing
from chargen.generation import fused
from chargen.generation.inference import Stepper, make_stepper, resolve_precision, step_precisions
from chargen.model import CharLM
from chargen.paths import user_data_dir
from chargen.threads import FairThreads, Load, MachineLoad

CACHE_NAME = "kernels.json"
BATCHES = (1, 64)  # stream counts measured; a run uses the choice for the nearest one
_TRIAL_STEPS = {1: 100, 64: 20}  # timed steps per trial: well under a second for every competitive choice
_TRIALS = 2  # alternating, best of: other processes share the machine
BUDGET = 1.0  # seconds for the whole choice, shared by the stream counts (plus a few steps per candidate)
_PATIENCE = 3  # steps after which a candidate is compared with the best per step
_SLOWER = 2.0  # per step, this many times the best so far is "clearly slower": abandoned
BUSY = 0.5  # CPUs kept busy by others during a measurement above which it is provisional
_JUDGED = 0.2  # seconds: a shorter measurement is too brief for /proc/stat's 10 ms ticks
QUIET = 1.0  # 1-minute load average (runnable processes, ours included) below which the machine is quiet
RETRY = 600.0  # seconds: a provisional choice is measured again on a quiet machine at most this often


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not on this platform: count the machine as busy, keep what is remembered
        return math.inf


@dataclass(frozen=True)
class Conditions:
    """What the choice reads from the machine besides the steps: a clock for the steps and the
    budget, the wall clock (the age of a provisional choice), other processes' load during the
    measurement (`load`, also what the sampler's thread count follows), and the recent load
    (whether to measure a provisional choice again). Tests inject theirs."""

    clock: Callable[[], float] = time.perf_counter
    wall: Callable[[], float] = time.time
    load: Load = field(default_factory=MachineLoad)
    recent_load: Callable[[], float] = _load_average


@dataclass(frozen=True)
class Kernel:
    """A way to run the step: the precision of its product and the torch threads it runs on
    (one thread can win for a single stream: no waking of idle threads at every product)."""

    precision: str
    threads: int

    @property
    def label(self) -> str:
        return f"{self.precision}/{self.threads}t"


@dataclass(frozen=True)
class KernelChoice:
    kernels: dict[int, Kernel]  # per measured stream count
    how: str  # requested, only choice, measured (remembered or, on a busy machine, not) or cached
    speeds: dict[int, dict[str, float]] = field(default_factory=dict)  # steps/s per stream count, kernel label

    def nearest(self, streams: int) -> int:
        """The measured stream count nearest to `streams` on a log scale."""
        return min(self.kernels, key=lambda b: abs(math.log(b) - math.log(max(1, streams))))

    def for_batch(self, streams: int) -> Kernel:
        return self.kernels[self.nearest(streams)]

    def precisions(self) -> set[str]:
        return {kernel.precision for kernel in self.kernels.values()}

    def describe(self) -> str:
        """E.g. "1 stream: int8-fbgemm/1t (fp32/1t 1.4k, int8-fbgemm/1t 2.8k steps/s); 64 streams: ...
        (measured)". No square brackets: rich would read them as markup."""
        parts = []
        for batch, kernel in self.kernels.items():
            measured = ", ".join(f"{label} {s / 1e3:.1f}k" for label, s in self.speeds.get(batch, {}).items())
            shown = f" ({measured} steps/s)" if measured else ""
            parts.append(f"{batch} stream{'s' if batch > 1 else ''}: {kernel.label}{shown}")
        return f"{'; '.join(parts)} ({self.how})"


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run a block on `threads` torch threads, then restore the process's setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's name with its family and model numbers: a virtual machine often shows only a
    brand ("AMD EPYC"), which two generations with different fastest kernels share."""
    try:
        first_cpu = cpuinfo.read_text(encoding="utf-8", errors="replace").split("\n\n")[0]
    except OSError:
        return platform.processor() or platform.machine()
    fields = {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in first_cpu.splitlines())}
    name = fields.get("model name") or platform.processor() or platform.machine()
    numbers = [
        f"{label} {fields[key]}" for key, label in (("cpu family", "family"), ("model", "model")) if fields.get(key)
    ]
    return f"{name} ({', '.join(numbers)})" if numbers else name


def cache_key(model: CharLM) -> str:
    c = model.config
    return (
        f"{cpu_model()} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
        f"waiting {os.environ.get('OMP_WAIT_POLICY', '-')}/{os.environ.get('GOMP_SPINCOUNT', '-')} | "
        f"native {fused.isa_in_use() or '-'} | "
        f"{c.cell} {c.layers}x{c.hidden} embed {model.embed.weight.shape[1]} vocab {c.vocab_size}"
    )


def choose_kernel(
    model: CharLM, device: torch.device, requested: str = "auto", conditions: Conditions = Conditions()
) -> KernelChoice:
    """The step per stream count: `requested` precision on the process's threads unless it is
    auto, else the precision and thread count that measured fastest here for this model."""
    threads = torch.get_num_threads()
    if requested != "auto":
        return KernelChoice(
            dict.fromkeys(BATCHES, Kernel(resolve_precision(requested, model, device), threads)), "requested"
        )
    options = [Kernel(p, t) for p in step_precisions(model, device) for t in sorted({1, threads})]
    if len(options) == 1:
        return KernelChoice(dict.fromkeys(BATCHES, options[0]), "only choice")
    path = user_data_dir() / CACHE_NAME
    key, entries = cache_key(model), read_cache(path)
    known = _parse(entries.get(key), options)
    if known is not None:
        kernels, speeds, since = known
        if since is None:
            return KernelChoice(kernels, "cached", speeds)
        if conditions.wall() - since < RETRY or conditions.recent_load() >= QUIET:
            return KernelChoice(kernels, "cached, provisional: measured while the machine was busy", speeds)
    clock, watch = conditions.clock, FairThreads(threads, load=conditions.load, every=0.0)
    start, judged_from = clock(), conditions.load.now()
    watch.update()
    speeds = {
        batch: measure(model, device, options, batch, start + BUDGET * (i + 1) / len(BATCHES), clock)
        for i, batch in enumerate(BATCHES)
    }
    best = {batch: next(k for k in options if k.label == max(s, key=s.__getitem__)) for batch, s in speeds.items()}
    watch.update()
    busy = watch.others if conditions.load.now() - judged_from >= _JUDGED else 0.0
    entries[key] = {
        "kernels": {str(b): {"precision": best[b].precision, "threads": best[b].threads} for b in BATCHES},
        "speeds": {str(b): speeds[b] for b in BATCHES},
    }
    if busy > BUSY:
        entries[key]["provisional_since"] = conditions.wall()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=1)
    except OSError:
        pass  # a read-only home: measure again next time
    if busy > BUSY:
        return KernelChoice(best, f"measured while other processes kept {busy:.1f} CPUs busy: provisional", speeds)
    return KernelChoice(best, "measured", speeds)


Remembered = tuple[dict[int, Kernel], dict[int, dict[str, float]], float | None]


def _parse(entry: object, options: list[Kernel]) -> Remembered | None:
    """A remembered choice (kernels, speeds, and when it was measured if provisional), if it is
    whole and was made among exactly the kernels that run here; else None."""
    if not isinstance(entry, dict):
        return None
    try:
        kernels = {b: Kernel(str(k["precision"]), int(k["threads"])) for b, k in _per_batch(entry["kernels"]).items()}
        speeds = {b: {str(label): float(v) for label, v in s.items()} for b, s in _per_batch(entry["speeds"]).items()}
        since = entry.get("provisional_since")
        since = None if since is None else float(since)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    labels = {k.label for k in options}
    fits = all(k in options for k in kernels.values()) and all(set(s) == labels for s in speeds.values())
    return (kernels, speeds, since) if fits else None


def _per_batch(stored: dict[str, Any]) -> dict[int, Any]:
    return {b: stored[str(b)] for b in BATCHES}


def read_cache(path: Path) -> dict[str, object]:
    """The remembered choices; empty when the file is missing or not what we wrote."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


@torch.inference_mode()
def measure(
    model: CharLM,
    device: torch.device,
    options: list[Kernel],
    streams: int,
    deadline: float = math.inf,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Steps per second of each candidate for `streams` streams: the best of alternating trials.
    A candidate clearly slower than the best so far is abandoned (its speed so far kept); past
    the `deadline` (on `clock`) only the candidates not measured yet get a trial, of a few steps."""
    per_step = {k.label: math.inf for k in options}
    abandoned: set[str] = set()
    steppers: dict[str, Stepper] = {}
    order = sorted(options, key=lambda k: k.precision != fused.PRECISION)  # the likeliest fastest first
    for _ in range(_TRIALS):
        for kernel in order:
            best = min(per_step.values())
            if kernel.label in abandoned or (clock() >= deadline and per_step[kernel.label] < math.inf):
                continue
            if kernel.precision not in steppers:
                steppers[kernel.precision] = make_stepper(model, device, kernel.precision, streams)
            with torch_threads(kernel.threads):
                seconds, slower = _seconds_per_step(steppers[kernel.precision], model, streams, best, deadline, clock)
            per_step[kernel.label] = min(per_step[kernel.label], seconds)
            if slower:
                abandoned.add(kernel.label)
    return {label: round(1 / seconds, 1) for label, seconds in per_step.items()}


def _seconds_per_step(
    stepper: Stepper, model: CharLM, streams: int, best: float, deadline: float, clock: Callable[[], float]
) -> tuple[float, bool]:
    """One trial: seconds per step after a step that warms up, and whether it stopped early
    because the candidate runs clearly slower than `best` seconds per step (judged from the
    warm-up on: one step far slower is enough)."""
    tokens = torch.zeros(streams, dtype=torch.long, device=next(model.parameters()).device)
    inner = stepper.enter(model.initial_state(streams, tokens.device))
    steps = _TRIAL_STEPS.get(streams, 20)
    done, start = -1, clock()  # step -1 warms up
    while done < steps:
        logits, inner = stepper.step(tokens, inner)
        tokens = logits.argmax(dim=-1)
        done, elapsed = done + 1, clock() - start
        if elapsed > _SLOWER * best * max(done, _PATIENCE):
            return elapsed / max(done, 1), True
        if done == 0:
            start = clock()
        elif clock() >= deadline and done >= _PATIENCE:
            break
    return elapsed / max(done, 1), False
