"""Many clients, one batched step: the scheduler behind `chargen serve`.

One thread advances every stream of every request a token at a time in one batch, with the
sampler's own parts: its step for the batch size (chargen.generation.sampler.Sampler.stepper_for,
on the kernel's threads), `choose` for the draw and TextOutput for the text. Streams join between
steps (their priming texts read together by Sampler.read) and leave when done or as soon as their
client goes away, so a step costs only the streams still wanted.

A stream draws from its own random numbers, seeded from (request seed, stream index) exactly as
`chargen sample` seeds stream i (chargen.generation.draw.StreamRandom), and a stream's row of the
int8 steps does not depend on the other rows (exact integer sums), so a request's text is the same
alone or beside others. Streams whose temperature, top-k or top-p differ are drawn in groups.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from chargen.config import SampleConfig
from chargen.generation.draw import StreamRandom, choose
from chargen.generation.inference import ModelStepper, Stepper
from chargen.generation.kernels import torch_threads
from chargen.generation.sampler import MAX_BATCH, Sampler
from chargen.generation.text_output import TextOutput


@dataclass(frozen=True)
class Piece:
    """What one step gave one stream: new text (may be empty), the probability of the token just
    drawn under the stream's settings, and why the stream ended, once it has."""

    text: str
    prob: float
    finish: str | None = None  # "stop" (a stop string), "length", "shutdown" or "error"


class Stream:
    """One stream of one request. `owner` is whatever the caller uses to route its pieces."""

    def __init__(self, prime: str, config: SampleConfig, index: int, owner: object = None) -> None:
        if config.seed is None:
            raise ValueError("a served stream needs a seed (its text must be repeatable)")
        self.prime, self.config, self.index, self.owner = prime, config, index, owner
        self.output = TextOutput(config.length, config.stop)
        self.random = None if config.greedy else StreamRandom(config.seed, 1, index)
        self.draw_key = (config.temperature, config.top_k, config.top_p)
        self.cancelled = False  # the client went away: dropped before the next step

    @property
    def finish(self) -> str | None:
        if not self.output.done:
            return None
        return "stop" if self.output.stopped else "length"


Deliver = Callable[[list[tuple[Stream, Piece]]], None]


class QueueFull(Exception):
    """Too many requests wait to join the batch."""


class Closed(Exception):
    """The server is shutting down."""


class Scheduler:
    """The batch and the thread that steps it. `deliver` is called from that thread once per step
    with every stream's new piece; it must not block."""

    def __init__(self, sampler: Sampler, deliver: Deliver, max_streams: int = MAX_BATCH, max_waiting: int = 64) -> None:
        self.sampler, self.deliver = sampler, deliver
        self.max_streams, self.max_waiting = max_streams, max_waiting
        self._cond = threading.Condition()
        self._waiting: deque[list[Stream]] = deque()  # requests not yet in the batch
        self._closing = False
        self._streams: list[Stream] = []  # the batch's rows, in order
        self._groups: list[tuple[SampleConfig, Tensor | None]] = []  # draw settings and their rows
        self._stepper: Stepper | None = None
        self._inner: list[Tensor] = []
        self._logits = torch.empty(0)
        self._thread = threading.Thread(target=self._run, name="chargen-batch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> int:
        return len(self._streams)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def submit(self, streams: list[Stream]) -> None:
        """Queue a request's streams to join the batch at the next step."""
        if len(streams) > self.max_streams:
            raise ValueError(f"a request may have at most {self.max_streams} streams")
        with self._cond:
            if self._closing:
                raise Closed()
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull()
            self._waiting.append(streams)
            self._cond.notify()

    def cancel(self, streams: list[Stream]) -> None:
        """The client is gone: its streams leave the batch before the next step."""
        for stream in streams:
            stream.cancelled = True

    def close(self, wait: bool = True) -> None:
        """End every stream (finish "shutdown") and stop the thread; safe from a signal handler
        with wait=False."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if wait and self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._closing and not self._waiting and not self._streams:
                        self._cond.wait()
                    if self._closing:
                        break
                    joining = self._take_waiting()
                try:
                    self._leave([s for s in self._streams if s.cancelled])
                    if joining:
                        self._join(joining)
                    if self._streams:
                        self._step()
                except Exception:  # a bug must not hang every client: end their streams, log it here
                    traceback.print_exc(file=sys.stderr)
                    outside = [s for s in joining if s not in self._streams]  # failed while joining
                    self.deliver([(s, Piece("", 0.0, "error")) for s in outside])
                    self._end_all("error")
        with self._cond:
            waiting = [s for request in self._waiting for s in request]
            self._waiting.clear()
        self.deliver([(s, Piece("", 0.0, "shutdown")) for s in waiting])
        self._end_all("shutdown")

    def _take_waiting(self) -> list[Stream]:
        """Whole requests, in order, while they fit in the batch; cancelled ones are dropped."""
        joining: list[Stream] = []
        while self._waiting:
            request = [s for s in self._waiting[0] if not s.cancelled]
            if len(self._streams) + len(joining) + len(request) > self.max_streams:
                break
            self._waiting.popleft()
            joining += request
        return joining

    def _end_all(self, finish: str) -> None:
        self.deliver([(s, Piece("", 0.0, finish)) for s in self._streams if not s.cancelled])
        self._streams, self._inner, self._stepper = [], [], None

    def _batch_dim(self) -> int:
        """The steppers keep each state tensor batch-first, except the model's own step (any
        cell), which keeps the model's (layers, B, H)."""
        return 1 if isinstance(self._stepper, ModelStepper) else 0

    def _use_stepper(self, streams: int) -> None:
        """The step for the new batch size, with the state carried into its form if it differs."""
        stepper = self.sampler.stepper_for(streams)
        old = self._stepper
        if old is not None and stepper is not old and self._streams:
            same_form = type(stepper) is type(old) and stepper.precision == old.precision
            self._inner = self._inner if same_form else stepper.enter(old.leave(self._inner))
        self._stepper = stepper

    def _join(self, joining: list[Stream]) -> None:
        context = self.sampler.read([s.prime for s in joining])
        self._use_stepper(len(self._streams) + len(joining))
        assert self._stepper is not None
        new = self._stepper.enter(context.state)
        if self._streams:
            dim = self._batch_dim()
            self._inner = [torch.cat([old, part], dim) for old, part in zip(self._inner, new)]
            self._logits = torch.cat([self._logits, context.logits])
        else:
            self._inner, self._logits = new, context.logits
        self._streams += joining
        self._regroup()

    def _leave(self, leaving: list[Stream]) -> None:
        if not leaving:
            return
        gone = {id(s) for s in leaving}
        keep = [k for k, s in enumerate(self._streams) if id(s) not in gone]
        self._streams = [self._streams[k] for k in keep]
        if not self._streams:
            self._inner, self._stepper = [], None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self._logits.device)
        dim = self._batch_dim()
        self._inner = [t.index_select(dim, index) for t in self._inner]
        self._logits = self._logits[index]
        self._use_stepper(len(self._streams))
        self._regroup()

    def _regroup(self) -> None:
        """Rows by draw settings; one group (the usual case) needs no indexing."""
        rows: dict[tuple[float, int, float], list[int]] = {}
        for k, stream in enumerate(self._streams):
            rows.setdefault(stream.draw_key, []).append(k)
        if len(rows) == 1:
            self._groups = [(self._streams[0].config, None)]
            return
        device = self._logits.device
        self._groups = [
            (self._streams[ks[0]].config, torch.tensor(ks, dtype=torch.long, device=device)) for ks in rows.values()
        ]

    def _draw(self) -> tuple[Tensor, Tensor]:
        """Each stream's next token and its probability, from its own random numbers."""
        zero = torch.zeros(1, 1, device=self._logits.device)
        uniforms = torch.cat([s.random.next() if s.random is not None else zero for s in self._streams])  # (B, 1)
        if self._groups[0][1] is None:
            token, probs = choose(self._logits, self._groups[0][0], uniforms)
            assert probs is not None
            return token, probs
        tokens = torch.empty(len(self._streams), dtype=torch.long, device=self._logits.device)
        probs = torch.empty(len(self._streams), device=self._logits.device)
        for config, rows in self._groups:
            assert rows is not None
            token, prob = choose(self._logits[rows], config, uniforms[rows])
            assert prob is not None
            tokens[rows], probs[rows] = token, prob
        return tokens, probs

    def _step(self) -> None:
        """Draw every stream's token, hand out the text, then advance the model past it."""
        assert self._stepper is not None
        streams = self._streams
        kernel = self.sampler.kernel.for_batch(len(streams))
        with torch_threads(self.sampler.threads_for(kernel.threads)):
            tokens, probs = self._draw()
            token_bytes = self.sampler.tokenizer.token_bytes
            pieces = []
            for stream, token, prob in zip(streams, tokens.tolist(), probs.tolist()):  # one host sync
                text = stream.output.feed(token_bytes[token])
                if text or stream.output.done:
                    pieces.append((stream, Piece(text, prob, stream.finish)))
            self.deliver(pieces)
            done = [s for s in streams if s.output.done or s.cancelled]
            if len(done) < len(streams):
                self._logits, self._inner = self._stepper.step(tokens, self._inner)
        self._leave(done)
