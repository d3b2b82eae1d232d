"""Many clients, one batched step: the scheduler behind `chargen serve`.

One thread advances every stream of every request a token at a time in one batch, with the
sampler's own parts: its step for the batch size (chargen.generation.sampler.Sampler.stepper_for,
on the kernel's threads), `choose` for the draw and TextOutput for the text. Streams join between
steps (their priming texts read together by Sampler.read) and leave when done or as soon as their
client goes away, so a step costs only the streams still wanted.

A step does no Python work per stream: one vectorised draw from every stream's own random numbers
(chargen.generation.draw.StreamRandom, seeded from (request seed, stream index) exactly as
`chargen sample` seeds stream i), and the tokens are kept as tensors. The text is decoded and
handed out every HAND_OUT_EVERY seconds, or less often with many streams so that the event loop
sends at most CHUNKS_PER_SECOND chunks (a stream's first text at once, and whenever a stream may
have reached its length), like `Sampler.completions` decodes in blocks: per-stream work in the
step thread took the GIL from the event loop at every step. A stream's row of the int8 steps does
not depend on the other rows (exact integer sums), so a request's text is the same alone or
beside others. Streams whose temperature, top-k or top-p differ are drawn in groups.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor

from chargen.config import SampleConfig
from chargen.generation.draw import StreamRandom, choose
from chargen.generation.inference import ModelStepper, Stepper
from chargen.generation.kernels import torch_threads
from chargen.generation.sampler import MAX_BATCH, Sampler
from chargen.serve.stream import Piece, Stream

HAND_OUT_EVERY = 0.02  # seconds between hand-outs of the text drawn since the last, at least
CHUNKS_PER_SECOND = 1000  # over all streams, at most: each costs the event loop a send and the client a read


Deliver = Callable[[list[tuple[Stream, Piece]]], None]


class QueueFull(Exception):
    """Too many requests wait to join the batch."""


class Closed(Exception):
    """The server is shutting down."""


class Scheduler:
    """The batch and the thread that steps it. `deliver` is called from that thread at every
    hand-out with each stream's new piece; it must not block."""

    def __init__(self, sampler: Sampler, deliver: Deliver, max_streams: int = MAX_BATCH, max_waiting: int = 64) -> None:
        self.sampler, self.deliver = sampler, deliver
        self.max_streams, self.max_waiting = max_streams, max_waiting
        self._cond = threading.Condition()
        self._waiting: deque[list[Stream]] = deque()  # requests not yet in the batch
        self._closing = False
        self._cancelled = False  # some stream was cancelled since the last hand-out
        self._streams: list[Stream] = []  # the batch's rows, in order
        self._groups: list[tuple[SampleConfig, Tensor | None]] = []  # draw settings and their rows
        self._with_probs = False  # some stream hands out each token's probability
        self._stepper: Stepper | None = None
        self._inner: list[Tensor] = []
        self._logits = torch.empty(0)
        self._random = StreamRandom(0, 0)
        self._drawn: list[tuple[Tensor, Tensor | None]] = []  # tokens (and probabilities) not yet handed out
        self._handed_out = 0.0  # when the text was last handed out (time.monotonic)
        self._every = HAND_OUT_EVERY  # seconds between hand-outs for the streams now running
        self._due = 1  # steps after which some stream may have reached its length
        self._fresh = False  # some stream has not handed out any text yet
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
        self._cancelled = True

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
                    if joining or self._cancelled or self._hand_out_due():
                        self._cancelled = False
                        self._hand_out()
                    if joining:
                        self._join(joining)
                    if self._streams:
                        self._step()
                except Exception:  # a bug must not hang every client: end their streams, log it here
                    traceback.print_exc(file=sys.stderr)
                    outside = [s for s in joining if s not in self._streams]  # failed while joining
                    self.deliver([(s, Piece("", None, "error")) for s in outside])
                    self._end_all("error")
            try:
                self._hand_out()  # what was drawn goes out before the streams end
            except Exception:
                traceback.print_exc(file=sys.stderr)
        with self._cond:
            waiting = [s for request in self._waiting for s in request]
            self._waiting.clear()
        self.deliver([(s, Piece("", None, "shutdown")) for s in waiting])
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
        self.deliver([(s, Piece("", None, finish)) for s in self._streams if not s.cancelled])
        self._streams, self._inner, self._stepper, self._drawn = [], [], None, []
        self._random = StreamRandom(0, 0)

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
        """New streams join the batch (nothing drawn is waiting to be handed out)."""
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
        self._random.join(*(s.random for s in joining))
        self._streams += joining
        self._fresh = True
        self._regroup()

    def _leave(self, leaving: list[Stream]) -> None:
        if not leaving:
            return
        gone = {id(s) for s in leaving}
        keep = [k for k, s in enumerate(self._streams) if id(s) not in gone]
        self._streams = [self._streams[k] for k in keep]
        index = torch.tensor(keep, dtype=torch.long, device=self._logits.device)
        self._random.select(index)
        if not self._streams:
            self._inner, self._stepper = [], None
            return
        dim = self._batch_dim()
        self._inner = [t.index_select(dim, index) for t in self._inner]
        self._logits = self._logits[index]
        self._use_stepper(len(self._streams))
        self._regroup()

    def _regroup(self) -> None:
        """Rows by draw settings; one group (the usual case) needs no indexing."""
        self._with_probs = any(s.pieces for s in self._streams)
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

    def _draw(self) -> tuple[Tensor, Tensor | None]:
        """Each stream's next token (and its probability), from its own random numbers."""
        uniforms = self._random.next()  # (B, 1)
        if self._groups[0][1] is None:
            return choose(self._logits, self._groups[0][0], uniforms, self._with_probs, self.sampler.banned)
        tokens = torch.empty(len(self._streams), dtype=torch.long, device=self._logits.device)
        probs = torch.zeros(len(self._streams), device=self._logits.device) if self._with_probs else None
        for config, rows in self._groups:
            assert rows is not None
            token, prob = choose(self._logits[rows], config, uniforms[rows], self._with_probs, self.sampler.banned)
            tokens[rows] = token
            if probs is not None and prob is not None:
                probs[rows] = prob
        return tokens, probs

    def _step(self) -> None:
        """Draw every stream's token and advance the model past it; no decoding here."""
        assert self._stepper is not None
        kernel = self.sampler.kernel.for_batch(len(self._streams))
        with torch_threads(self.sampler.threads_for(kernel.threads)):
            tokens, probs = self._draw()
            self._drawn.append((tokens, probs))
            self._logits, self._inner = self._stepper.step(tokens, self._inner)

    def _hand_out_due(self) -> bool:
        if not self._drawn:
            return False
        return self._fresh or len(self._drawn) >= self._due or time.monotonic() - self._handed_out >= self._every

    def _hand_out(self) -> None:
        """Decode what was drawn since the last hand-out, deliver it, and let finished and
        cancelled streams leave."""
        self._handed_out = time.monotonic()
        if self._drawn:
            tokens = torch.stack([t for t, _ in self._drawn], 1).tolist()  # (B, steps): one host sync
            with_probs = self._drawn[0][1] is not None
            probs = torch.stack([p for _, p in self._drawn], 1).tolist() if with_probs else None  # type: ignore[misc]
            self._drawn = []
            token_bytes = self.sampler.tokenizer.token_bytes
            pieces = []
            for k, stream in enumerate(self._streams):
                piece = stream.take(tokens[k], probs[k] if probs is not None else None, token_bytes)
                if piece is not None:
                    pieces.append((stream, piece))
            if pieces:
                self.deliver(pieces)
        self._leave([s for s in self._streams if s.output.done or s.cancelled])
        self._fresh = not all(s.started for s in self._streams)
        self._every = max(HAND_OUT_EVERY, len(self._streams) / CHUNKS_PER_SECOND)
        per_token = self.sampler.max_token_chars
        self._due = max(1, min((-(-s.output.remaining() // per_token) for s in self._streams), default=1))
