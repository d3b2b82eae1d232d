"""How the next token is drawn: per-stream random numbers, temperature, top-k and top-p.

Each stream draws its random numbers from its own generator, seeded from (seed, stream index),
so stream i produces the same text whether it runs alone or inside a batch.
"""

from __future__ import annotations

import hashlib
import secrets

import torch
from torch import Tensor

from chargen.config import SampleConfig

_RANDOM_BLOCK = 256  # uniforms drawn per stream at a time


def stream_seed(seed: int, index: int) -> int:
    digest = hashlib.sha256(f"chargen:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def fresh_seed() -> int:
    """A random seed for unseeded runs, small enough to type back in with --seed."""
    return secrets.randbelow(1 << 31)


class StreamRandom:
    """Per-stream uniform numbers, drawn in blocks so a step costs no Python loop over streams.

    Each row keeps its own block and its place in it, so streams of other seeds may join a batch
    at any step (`join`) and leave it (`select`), each going on with its own sequence: a served
    request draws what `chargen sample` draws for the same seed, beside any others."""

    def __init__(self, seed: int, streams: int, first_index: int = 0, device: torch.device | str = "cpu") -> None:
        self._generators = [torch.Generator().manual_seed(stream_seed(seed, first_index + i)) for i in range(streams)]
        self._device = device
        self._block = torch.empty(streams, _RANDOM_BLOCK, device=device)  # each row's next numbers
        self._used = torch.full((streams,), _RANDOM_BLOCK, dtype=torch.long, device=device)  # all used: draw first
        self._left = 0  # steps before some row has used its whole block

    def __len__(self) -> int:
        return len(self._generators)

    def next(self) -> Tensor:
        """One number per stream, (B, 1)."""
        if self._left == 0:
            self._refill()
        self._left -= 1
        drawn = self._block.gather(1, self._used[:, None])
        self._used += 1
        return drawn

    def _refill(self) -> None:
        rows = (self._used == _RANDOM_BLOCK).nonzero()[:, 0]
        fresh = [torch.rand(_RANDOM_BLOCK, generator=self._generators[i]) for i in rows.tolist()]
        self._block[rows] = torch.stack(fresh).to(self._device)
        self._used[rows] = 0
        self._left = _RANDOM_BLOCK - int(self._used.max())

    def join(self, *others: StreamRandom) -> None:
        """Append the others' streams, each where it stands in its own sequence."""
        parts = [self, *others]
        self._generators = [g for part in parts for g in part._generators]
        self._block = torch.cat([part._block for part in parts])
        self._used = torch.cat([part._used for part in parts])
        self._left = min(part._left for part in parts)

    def select(self, keep: Tensor) -> None:
        """Keep only the streams at positions `keep` (their sequences go on unchanged)."""
        self._generators = [self._generators[i] for i in keep.tolist()]
        keep = keep.to(self._block.device)
        self._block, self._used = self._block[keep], self._used[keep]
        self._left = _RANDOM_BLOCK - int(self._used.max()) if len(keep) else 0


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Logits with everything outside the top-k and the top-p nucleus set to -inf."""
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
        drop_sorted = before >= top_p  # the top token always stays (its `before` is 0)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose(
    logits: Tensor,
    config: SampleConfig,
    uniforms: Tensor | None,
    with_probs: bool = True,
    banned: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Next token per stream and (if asked) the probability the tempered, filtered distribution
    gave it. uniforms: (B, 1), one per stream; greedy needs none. `banned` ids are never chosen."""
    logits = logits.float()
    if banned is not None:
        logits = logits.index_fill(-1, banned, float("-inf"))
    if config.greedy:
        token = logits.argmax(dim=-1)
        return token, logits.softmax(dim=-1).gather(-1, token[:, None])[:, 0] if with_probs else None
    assert uniforms is not None
    temperature = config.temperature
    if temperature < 1e-3:  # dividing could overflow to inf (inf - inf = NaN): shift the likeliest to 0
        logits = logits - logits.amax(dim=-1, keepdim=True)
        temperature = max(temperature, 1e-30)  # and never divide by a float32 zero
    probs = filter_logits(logits / temperature, config.top_k, config.top_p).softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)  # inverse-CDF sampling: one uniform per stream, fully vectorised
    vocab = probs.shape[-1]
    token = torch.searchsorted(cdf, uniforms * cdf.narrow(1, vocab - 1, 1), right=True).view(-1)
    token = token.clamp_(max=vocab - 1)
    return token, probs.gather(-1, token[:, None])[:, 0] if with_probs else None
