"""Which one-token step samples fastest here: measured on first use, remembered per machine.

The fastest step is not a property of the code but of the CPU: one stream of a 2×512 LSTM
sampled 10.5k chars/s with torch's int8 matmul on an AMD EPYC without AMX, but 4.45k on an Intel
Xeon with AMX, where fbgemm's prepacked int8 product is much faster; and the best product for one
stream is not the best for 64. So `auto` times each usable product (chargen.generation.products)
for a moment, for one stream and for a batch, and keeps the answer in the user data folder, keyed
by the CPU model, the torch version, the thread count and the model's shapes. The file is only a
memo: safe to delete, and ignored (then rewritten) when unreadable.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from chargen.atomic import replacing
from chargen.generation.inference import make_stepper, resolve_precision, step_precisions
from chargen.model import CharLM
from chargen.paths import user_data_dir

CACHE_NAME = "kernels.json"
BATCHES = (1, 64)  # stream counts measured; a run uses the choice for the nearest one
_TRIAL_STREAMS = {1: 100, 64: 20}  # steps per timing: well under a second for every choice
_TRIALS = 3  # alternating, best of: other processes share the machine


@dataclass(frozen=True)
class KernelChoice:
    precisions: dict[int, str]  # per measured stream count
    how: str  # requested, only choice, measured or cached
    speeds: dict[int, dict[str, float]] = field(default_factory=dict)  # steps/s per stream count, precision

    def nearest(self, streams: int) -> int:
        """The measured stream count nearest to `streams` on a log scale."""
        return min(self.precisions, key=lambda b: abs(math.log(b) - math.log(max(1, streams))))

    def for_batch(self, streams: int) -> str:
        return self.precisions[self.nearest(streams)]

    def describe(self) -> str:
        if len(set(self.precisions.values())) == 1 and not self.speeds:
            return f"{next(iter(self.precisions.values()))} ({self.how})"
        parts = []
        for batch, precision in self.precisions.items():
            measured = ", ".join(f"{p} {s / 1e3:.1f}k" for p, s in self.speeds.get(batch, {}).items())
            shown = f" [{measured}]" if measured else ""
            parts.append(f"{batch} stream{'s' if batch > 1 else ''}: {precision}{shown}")
        return f"{'; '.join(parts)} ({self.how}{', steps/s' if self.speeds else ''})"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_key(model: CharLM) -> str:
    c = model.config
    return (
        f"{cpu_model()} | torch {torch.__version__} | threads {torch.get_num_threads()} | "
        f"{c.cell} {c.layers}x{c.hidden} embed {model.embed.weight.shape[1]} vocab {c.vocab_size}"
    )


def choose_kernel(model: CharLM, device: torch.device, requested: str = "auto") -> KernelChoice:
    """The precision of the sampling step per stream count: `requested` unless it is auto, else
    the one that measured fastest on this machine for this model's shapes."""
    if requested != "auto":
        return KernelChoice(dict.fromkeys(BATCHES, resolve_precision(requested, model, device)), "requested")
    options = step_precisions(model, device)
    if len(options) == 1:
        return KernelChoice(dict.fromkeys(BATCHES, options[0]), "only choice")
    path = user_data_dir() / CACHE_NAME
    key, entries = cache_key(model), read_cache(path)
    known = _parse(entries.get(key), options)
    if known is not None:
        return KernelChoice(known[0], "cached", known[1])
    speeds = {batch: measure(model, device, options, batch) for batch in BATCHES}
    best = {batch: max(s, key=s.__getitem__) for batch, s in speeds.items()}
    entries[key] = {"precisions": {str(b): best[b] for b in BATCHES}, "speeds": {str(b): speeds[b] for b in BATCHES}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=1)
    except OSError:
        pass  # a read-only home: measure again next time
    return KernelChoice(best, "measured", speeds)


def _parse(entry: object, options: list[str]) -> tuple[dict[int, str], dict[int, dict[str, float]]] | None:
    """A remembered choice, if it is whole and names precisions that run here; else None."""
    if not isinstance(entry, dict):
        return None
    try:
        precisions = {b: entry["precisions"][str(b)] for b in BATCHES}
        speeds = {b: {str(p): float(v) for p, v in entry["speeds"][str(b)].items()} for b in BATCHES}
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return (precisions, speeds) if all(p in options for p in precisions.values()) else None


def read_cache(path: Path) -> dict[str, object]:
    """The remembered choices; empty when the file is missing or not what we wrote."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


@torch.inference_mode()
def measure(model: CharLM, device: torch.device, options: list[str], streams: int) -> dict[str, float]:
    """Steps per second of each candidate step for `streams` streams (best of alternating trials)."""
    steppers = {p: make_stepper(model, device, p, streams) for p in options}
    steps = _TRIAL_STREAMS.get(streams, 20)
    best = dict.fromkeys(options, float("inf"))
    tokens = torch.zeros(streams, dtype=torch.long, device=device)
    for _ in range(_TRIALS + 1):  # the first round warms up
        for precision, stepper in steppers.items():
            inner = stepper.enter(model.initial_state(streams, device))
            start = time.perf_counter()
            for _ in range(steps):
                logits, inner = stepper.step(tokens, inner)
                tokens = logits.argmax(dim=-1)
            best[precision] = min(best[precision], time.perf_counter() - start)
    return {p: round(steps / seconds, 1) for p, seconds in best.items()}
