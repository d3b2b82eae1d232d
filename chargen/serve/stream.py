"""One served stream: its settings, its own random numbers and its text, handed out in pieces."""

from __future__ import annotations

from dataclasses import dataclass

from chargen.config import SampleConfig
from chargen.generation.draw import StreamRandom
from chargen.generation.text_output import TextOutput


@dataclass(frozen=True)
class Piece:
    """What a stream drew since its last piece: new text (may be empty), each new token's text and
    probability under the stream's settings when the request asked for them, and why the stream
    ended, once it has."""

    text: str
    tokens: list[tuple[str, float]] | None = None
    finish: str | None = None  # "stop" (a stop string), "length", "shutdown" or "error"


class Stream:
    """One stream of one request. `owner` is whatever the caller uses to route its pieces;
    `pieces`: hand out each token's text and probability (the playground's colours), not only the text."""

    def __init__(
        self, prime: str, config: SampleConfig, index: int, owner: object = None, pieces: bool = False
    ) -> None:
        if config.seed is None:
            raise ValueError("a served stream needs a seed (its text must be repeatable)")
        self.prime, self.config, self.index, self.owner, self.pieces = prime, config, index, owner, pieces
        self.output = TextOutput(config.length, config.stop)
        self.random = StreamRandom(config.seed, 1, index)  # greedy streams draw too (unused): rows stay aligned
        self.draw_key = (config.temperature, config.top_k, config.top_p)
        self.cancelled = False  # the client went away: dropped before the next step
        self.started = False  # has handed out text: until then its text goes out after every step

    @property
    def finish(self) -> str | None:
        if not self.output.done:
            return None
        return "stop" if self.output.stopped else "length"

    def take(self, tokens: list[int], probs: list[float] | None, token_bytes: list[bytes]) -> Piece | None:
        """The piece for tokens drawn since the last one (None if there is nothing to say). Tokens
        past the stream's end (drawn before it was known to have ended) change nothing."""
        if self.cancelled or self.output.done:
            return None
        shown: list[tuple[str, float]] | None = None
        if self.pieces and probs is not None:
            feed = self.output.feed
            shown = [(text, p) for text, p in ((feed(token_bytes[t]), p) for t, p in zip(tokens, probs)) if text]
            text = "".join(text for text, _ in shown)
        else:
            text = self.output.feed(b"".join([token_bytes[t] for t in tokens]))
        finish = self.finish
        if not text and finish is None:
            return None
        self.started = True
        return Piece(text, shown, finish)
