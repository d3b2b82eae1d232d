"""Which one-token step samples fastest here: measured on first use, remembered per machine.

int8 or fp32 is not a property of the code but of the CPU: one stream of a 2×512 LSTM sampled
10.5k chars/s in int8 on an AMD EPYC without AMX, where int8 wins, but 4.45k on an Intel Xeon
with AMX. So `auto` times each candidate step for a moment (one stream, where the difference
shows) and keeps the answer in the user data folder, keyed by the CPU model, the torch version,
the thread count and the model's shapes. The file is only a memo: safe to delete, and ignored
(then rewritten) when unreadable.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from chargen.atomic import replacing
from chargen.generation.inference import int8_available, make_stepper, resolve_precision
from chargen.model import CharLM
from chargen.paths import user_data_dir

CACHE_NAME = "kernels.json"
_TRIAL_STEPS = 100  # per timing; a 2×512 step takes ~0.1 ms, so a choice costs well under a second
_TRIALS = 3  # alternating, best of: other processes share the machine


@dataclass(frozen=True)
class KernelChoice:
    precision: str
    how: str  # requested, only choice, measured or cached
    speeds: dict[str, float] = field(default_factory=dict)  # one-stream steps/s per candidate

    def describe(self) -> str:
        measured = ", ".join(f"{p} {s / 1e3:.1f}k steps/s" for p, s in self.speeds.items())
        return f"{self.precision} ({self.how}{': ' + measured if measured else ''})"


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


def candidates(model: CharLM, device: torch.device) -> list[str]:
    return ["int8", "fp32"] if model.config.cell == "lstm" and int8_available(device) else ["fp32"]


def choose_kernel(model: CharLM, device: torch.device, requested: str = "auto") -> KernelChoice:
    """The precision of the sampling step: `requested` unless it is auto, else the one that
    measured fastest on this machine for this model's shapes."""
    if requested != "auto":
        return KernelChoice(resolve_precision(requested, model, device), "requested")
    options = candidates(model, device)
    if len(options) == 1:
        return KernelChoice(options[0], "only choice")
    path = user_data_dir() / CACHE_NAME
    key, entries = cache_key(model), read_cache(path)
    known = entries.get(key)
    if isinstance(known, dict) and known.get("precision") in options and isinstance(known.get("speeds"), dict):
        return KernelChoice(known["precision"], "cached", known["speeds"])
    speeds = measure(model, device, options)
    best = max(speeds, key=speeds.__getitem__)
    entries[key] = {"precision": best, "speeds": speeds}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=1)
    except OSError:
        pass  # a read-only home: measure again next time
    return KernelChoice(best, "measured", speeds)


def read_cache(path: Path) -> dict[str, object]:
    """The remembered choices; empty when the file is missing or not what we wrote."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


@torch.inference_mode()
def measure(model: CharLM, device: torch.device, options: list[str]) -> dict[str, float]:
    """One-stream steps per second of each candidate step (best of alternating trials)."""
    steppers = {p: make_stepper(model, device, p) for p in options}
    best = dict.fromkeys(options, float("inf"))
    token = torch.zeros(1, dtype=torch.long, device=device)
    for _ in range(_TRIALS + 1):  # the first round warms up
        for precision, stepper in steppers.items():
            inner = stepper.enter(model.initial_state(1, device))
            start = time.perf_counter()
            for _ in range(_TRIAL_STEPS):
                logits, inner = stepper.step(token, inner)
                token = logits.argmax(dim=-1)
            best[precision] = min(best[precision], time.perf_counter() - start)
    return {p: round(_TRIAL_STEPS / seconds, 1) for p, seconds in best.items()}
