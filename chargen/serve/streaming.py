"""From the schedulers' threads to the clients: each request's pieces as they arrive on the event
loop, and its completion whole or as server-sent events in the OpenAI format.

The schedulers hand out text in batches (chargen.serve.batching), and each batch costs the event
loop one wake-up, one list append per stream and one event per request; a streaming request then
sends one chunk per choice with what arrived, its JSON built around a head encoded once.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from chargen.serve.requests import ApiError, CompletionRequest
from chargen.serve.stream import Piece, Stream

_FINISH = {"stop": "stop", "length": "length", "shutdown": "stop"}  # the API knows only these


class Inbox:
    """A request's pieces that arrived and are not yet sent, by stream index."""

    def __init__(self) -> None:
        self.pieces: list[tuple[int, Piece]] = []
        self.arrived = asyncio.Event()

    async def take(self) -> list[tuple[int, Piece]]:
        """Every piece that has arrived, waiting for at least one."""
        await self.arrived.wait()
        self.arrived.clear()
        taken, self.pieces = self.pieces, []
        return taken


class Delivery:
    """Pieces from the schedulers' threads to the requests' inboxes on the event loop: one wake-up
    of the loop however many hand-outs happened while it was busy."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self._lock = loop, threading.Lock()
        self._pending: list[tuple[Stream, Piece]] = []

    def __call__(self, pieces: list[tuple[Stream, Piece]]) -> None:
        with self._lock:
            wake = not self._pending
            self._pending += pieces
        if wake and pieces:
            self._loop.call_soon_threadsafe(self._fan_out)

    def _fan_out(self) -> None:
        with self._lock:
            pieces, self._pending = self._pending, []
        inboxes = set()
        for stream, piece in pieces:
            inbox: Inbox = stream.owner  # type: ignore[assignment]
            inbox.pieces.append((stream.index, piece))
            inboxes.add(inbox)
        for inbox in inboxes:
            inbox.arrived.set()


class Completion:
    """One request's choices as they arrive: whole, or as server-sent events in the OpenAI format."""

    def __init__(
        self,
        ask: CompletionRequest,
        primes: list[str],
        head: dict[str, Any],
        prompt_tokens: int,
        inbox: Inbox,
        cancel: Callable[[], None],
    ) -> None:
        self.ask, self.primes, self.head, self.inbox, self.cancel = ask, primes, head, inbox, cancel
        self.prompt_tokens, self.chars = prompt_tokens, 0
        self.open = len(primes)
        self._event_head = f"data: {json.dumps(head, ensure_ascii=False)[:-1]}, "  # the head without its "}"

    async def _arrived(self) -> dict[int, list[Piece]]:
        """Every piece that has arrived (waiting for at least one), by choice."""
        arrived: dict[int, list[Piece]] = {}
        for index, piece in await self.inbox.take():
            arrived.setdefault(index, []).append(piece)
            self.chars += len(piece.text)
            if piece.finish == "error":
                raise ApiError(500, "internal server error while sampling (details are in the server's log)")
            self.open -= piece.finish is not None
        return arrived

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.chars,
            "total_tokens": self.prompt_tokens + self.chars,
        }

    async def whole(self) -> dict[str, Any]:
        texts = [[p] if self.ask.echo else [] for p in self.primes]
        finish: list[str | None] = [None] * len(self.primes)
        try:
            while self.open:
                for index, pieces in (await self._arrived()).items():
                    texts[index] += [p.text for p in pieces]
                    finish[index] = pieces[-1].finish
        finally:
            self.cancel()
        choices = [
            {"text": "".join(t), "index": i, "logprobs": None, "finish_reason": _FINISH.get(f or "", f)}
            for i, (t, f) in enumerate(zip(texts, finish))
        ]
        return {**self.head, "choices": choices, "usage": self.usage()}

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        rest = json.dumps({"choices": choices, **extra}, ensure_ascii=False)[1:]
        return f"{self._event_head}{rest}\n\n"

    async def events(self) -> AsyncIterator[str]:
        """Chunks as the text is handed out; with `chargen_pieces` asked for, each choice carries
        its tokens' texts and probabilities ([text, p] each, for the playground's colouring)."""
        pieces = self.ask.chargen_pieces
        try:
            if self.ask.echo:
                yield self._chunk([_choice(i, p, None, [] if pieces else None) for i, p in enumerate(self.primes)])
            while self.open:
                try:
                    arrived = await self._arrived()
                except ApiError as err:
                    yield f"data: {json.dumps(err.body())}\n\n"
                    return
                choices = []
                for index, got in sorted(arrived.items()):
                    shown = [[t, round(p, 4)] for piece in got for t, p in piece.tokens or ()] if pieces else None
                    choices.append(_choice(index, "".join(p.text for p in got), got[-1].finish, shown))
                yield "".join(self._chunk([choice]) for choice in choices)
            if self.ask.include_usage:
                yield self._chunk([], usage=self.usage())
            yield "data: [DONE]\n\n"
        finally:
            self.cancel()  # a client gone mid-stream: its streams leave the batch before the next step


def _choice(index: int, text: str, finish: str | None, pieces: list[list[Any]] | None) -> dict[str, Any]:
    found = {"text": text, "index": index, "logprobs": None, "finish_reason": _FINISH.get(finish or "", finish)}
    return found if pieces is None else {**found, "chargen_pieces": pieces}
