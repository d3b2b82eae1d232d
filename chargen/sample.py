"""The one sampler behind the CLI, the REPL and the Python API.

The model reads each priming text to build its state, then extends every stream one token per
step, all streams in one batched forward pass. Each stream draws its random numbers from its own
generator, seeded from (seed, stream index), so stream i produces the same text whether it runs
alone or inside a batch.
"""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from chargen.config import SampleConfig
from chargen.model import CharLM, State
from chargen.tokenizers import Tokenizer

_RANDOM_BLOCK = 256  # uniforms drawn per stream at a time


@dataclass
class Context:
    """What the model has read so far, per stream: its state and its next-token logits."""

    state: State
    logits: Tensor  # (B, V)

    @property
    def batch_size(self) -> int:
        return self.logits.shape[0]


def stream_seed(seed: int, index: int) -> int:
    digest = hashlib.sha256(f"chargen:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class StreamRandom:
    """Per-stream uniform numbers, drawn in blocks so a step costs no Python loop over streams."""

    def __init__(self, seed: int, streams: int, first_index: int = 0) -> None:
        self._generators = [torch.Generator().manual_seed(stream_seed(seed, first_index + i)) for i in range(streams)]
        self._block = torch.empty(streams, 0)
        self._used = 0

    def next(self) -> Tensor:
        if self._used == self._block.shape[1]:
            self._block = torch.stack([torch.rand(_RANDOM_BLOCK, generator=g) for g in self._generators])
            self._used = 0
        self._used += 1
        return self._block[:, self._used - 1]  # (B,)


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


def choose(logits: Tensor, config: SampleConfig, uniforms: Tensor) -> tuple[Tensor, Tensor]:
    """Next token per stream and the probability the (tempered, filtered) distribution gave it."""
    logits = logits.float()
    if config.greedy:
        probs = logits.softmax(dim=-1)
        token = logits.argmax(dim=-1)
        return token, probs.gather(-1, token[:, None])[:, 0]
    probs = filter_logits(logits / config.temperature, config.top_k, config.top_p).softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)  # inverse-CDF sampling: one uniform per stream, fully vectorised
    token = torch.searchsorted(cdf, (uniforms * cdf[:, -1])[:, None], right=True)[:, 0]
    token = token.clamp_(max=probs.shape[-1] - 1)
    return token, probs.gather(-1, token[:, None])[:, 0]


@dataclass
class _Output:
    """One stream's decoded text, holding back any tail that could start a stop string."""

    length: int
    stops: tuple[str, ...]
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    emitted: int = 0
    pending: str = ""
    done: bool = False

    def feed(self, data: bytes) -> str:
        if self.done:
            return ""
        self.pending += self.decoder.decode(data)
        for stop in self.stops:
            at = self.pending.find(stop)
            if at >= 0:
                self.pending, self.done = self.pending[:at], True
        hold = 0 if self.done else self._held_back()
        ready = self.pending[: len(self.pending) - hold]
        ready = ready[: self.length - self.emitted]
        self.pending = self.pending[len(self.pending) - hold :]
        self.emitted += len(ready)
        if self.emitted >= self.length:
            self.done = True
        return ready if not self.done else ready + self._flush()

    def _held_back(self) -> int:
        for size in range(min(len(self.pending), max((len(s) for s in self.stops), default=1) - 1), 0, -1):
            if any(s.startswith(self.pending[-size:]) for s in self.stops):
                return size
        return 0

    def _flush(self) -> str:
        rest = self.pending[: max(0, self.length - self.emitted)]
        self.pending = ""
        self.emitted += len(rest)
        return rest


@dataclass
class Step:
    texts: list[str]  # new text per stream (may be empty)
    probs: Tensor  # (B,) probability of the token each stream just drew


class Sampler:
    def __init__(self, model: CharLM, tokenizer: Tokenizer, device: torch.device | str = "cpu") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        start = tokenizer.encode("\n")
        self._start_id = int(start[-1]) if len(start) else 0

    @torch.inference_mode()
    def read(self, texts: Sequence[str], context: Context | None = None) -> Context:
        """Feed one text per stream; with no context, an empty text starts as if after a newline."""
        states, logits = [], []
        for i, text in enumerate(texts):
            ids = self.tokenizer.encode(text).long()
            if context is None:
                state = None
                if len(ids) == 0:
                    ids = torch.tensor([self._start_id])
            else:
                state = tuple(s[:, i : i + 1] for s in context.state)
                if len(ids) == 0:
                    states.append(state)
                    logits.append(context.logits[i : i + 1])
                    continue
            out, state = self.model(ids[None].to(self.device), state)
            states.append(state)
            logits.append(out[:, -1])
        return Context(tuple(torch.cat(parts, dim=1) for parts in zip(*states)), torch.cat(logits))

    @torch.inference_mode()
    def stream(self, context: Context, config: SampleConfig, first_index: int = 0) -> Iterator[Step]:
        """Extend every stream of `context` (updated in place) until each has `length` characters
        or hit a stop string. Yields each step's new text."""
        seed = config.seed if config.seed is not None else 0
        random = StreamRandom(seed, context.batch_size, first_index)
        outputs = [_Output(config.length, config.stop) for _ in range(context.batch_size)]
        token_bytes = self.tokenizer.token_bytes
        while not all(o.done for o in outputs):
            token, probs = choose(context.logits, config, random.next().to(self.device))
            texts = [o.feed(token_bytes[t]) for o, t in zip(outputs, token.tolist())]
            out, context.state = self.model(token[:, None], context.state)
            context.logits = out[:, -1]
            yield Step(texts, probs)

    def generate(self, primes: Sequence[str], config: SampleConfig, first_index: int = 0) -> list[str]:
        """The continuation of each priming text (without the prime)."""
        context = self.read(primes)
        pieces: list[list[str]] = [[] for _ in primes]
        for step in self.stream(context, config, first_index):
            for parts, text in zip(pieces, step.texts):
                parts.append(text)
        return ["".join(parts) for parts in pieces]
