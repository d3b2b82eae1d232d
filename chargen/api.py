"""The Python API: load a checkpoint, generate text.

    from chargen import load

    model = load("checkpoints/shakespeare.pt")
    for text in model.generate(["To be", "Or not"], length=200, temperature=0.7, top_k=20, seed=1):
        print(text)

`Model.generate` runs every sample as a parallel stream of chargen.generation.sampler's one sampler.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chargen.checkpoint import load_model
from chargen.config import SampleConfig
from chargen.data.tokenizers import Tokenizer
from chargen.device import select_device
from chargen.generation.sampler import Sampler

_DEFAULTS = SampleConfig()


@dataclass
class Model:
    """A checkpoint ready to sample from. Build one with `load`."""

    sampler: Sampler
    payload: dict[str, Any]  # the checkpoint's contents: config, metrics, corpus description

    @property
    def tokenizer(self) -> Tokenizer:
        return self.sampler.tokenizer

    @property
    def device(self) -> torch.device:
        return self.sampler.device

    def generate(
        self,
        primes: str | Sequence[str] = "",
        *,
        n: int = 1,
        length: int = _DEFAULTS.length,
        temperature: float = _DEFAULTS.temperature,
        top_k: int = _DEFAULTS.top_k,
        top_p: float = _DEFAULTS.top_p,
        seed: int | None = None,
        stop: str | Sequence[str] = (),
        first_index: int = 0,
    ) -> list[str]:
        """`n` continuations of each priming text (without the text itself), all computed as
        parallel streams: prime 0's samples first, then prime 1's, and so on. With a seed,
        sample i is the same text every time, and the same whether generated alone (with
        first_index=i) or among others. Temperature 0 is greedy."""
        if isinstance(primes, str):
            primes = [primes]
        config = SampleConfig(
            length=length,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
        )
        return self.sampler.generate([p for p in primes for _ in range(n)], config, first_index)


def load(path: str | Path, *, device: str = "auto", precision: str = "auto") -> Model:
    """Load a checkpoint for sampling. precision: "fp32" (the model's own tokens), "int8",
    "int8-fbgemm", "bf16" or "int8-fused" (LSTM on the CPU: faster, same quality within a few
    thousandths of a bit per character) or "auto" (the fastest measured on this machine)."""
    loaded = load_model(path)
    where = select_device(device)
    return Model(Sampler(loaded.model.to(where), loaded.tokenizer, where, precision), loaded.payload)
