"""The one sampler behind the CLI, the REPL and the Python API.

The model reads each priming text to build its state, then extends every stream one token per
step, all streams in one batched step (chargen.generation.inference); chargen.generation.draw
picks each token, chargen.generation.text_output turns tokens into text.

Two ways to run the same steps: `stream` decodes after every token (for text shown as it is
written, and for callers that go on from the context), `completions` decodes blocks of tokens at
once and drops finished streams from the batch (for text wanted whole). Both draw the same
tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

from chargen.config import SampleConfig
from chargen.data.tokenizers import Tokenizer, unwritten_ids
from chargen.generation.draw import StreamRandom, choose, fresh_seed
from chargen.generation.inference import Stepper, make_stepper
from chargen.generation.kernels import Conditions, choose_kernel, torch_threads
from chargen.generation.text_output import TextOutput
from chargen.model import CharLM, State
from chargen.threads import FairThreads, Load

_DECODE_BLOCK = 64  # steps between decodes when nothing is streamed
MAX_BATCH = 256  # streams stepped together; more are run in successive batches
LOOK_EVERY = 0.5  # seconds between looks at the load: many runs last only seconds; a look costs ~20 µs


@dataclass
class Context:
    """What the model has read so far, per stream: its state and its next-token logits."""

    state: State
    logits: Tensor  # (B, V)

    @property
    def batch_size(self) -> int:
        return self.logits.shape[0]


@dataclass
class Step:
    texts: list[str]  # new text per stream (may be empty)
    probs: Tensor  # (B,) probability of the token each stream just drew (0 for finished streams)


@dataclass
class Completion:
    text: str  # the continuation, without the priming text
    stopped: bool  # ended by a stop string (else by the length)


class _Run:
    """Streams being extended: the stepper's state for the rows still running, their random
    numbers and their decoded text. Finished rows leave the batch."""

    def __init__(self, sampler: Sampler, context: Context, config: SampleConfig, first_index: int) -> None:
        self.sampler, self.config = sampler, config
        size = context.batch_size
        self.rows = torch.arange(size, device=sampler.device)  # context rows still running
        self.stepper = sampler.stepper_for(size)
        self.threads = sampler.kernel.for_batch(size).threads
        self.inner = self.stepper.enter(context.state)
        self.logits = context.logits
        seed = config.seed if config.seed is not None else fresh_seed()
        self.random = None if config.greedy else StreamRandom(seed, size, first_index, sampler.device)
        self.outputs = [TextOutput(config.length, config.stop) for _ in range(size)]
        self.texts: list[list[str]] = [[] for _ in range(size)]

    @property
    def finished(self) -> bool:
        return len(self.rows) == 0

    def advance(self, steps: int, with_probs: bool) -> tuple[list[str], Tensor | None]:
        """Run `steps` steps for every running row; returns each running row's new text (and
        the probability of each token when one step is taken)."""
        stepper, config = self.stepper, self.config
        logits, inner = self.logits, self.inner
        tokens, probs = [], None
        with torch_threads(self.sampler.threads_for(self.threads)):
            for _ in range(steps):
                uniforms = self.random.next() if self.random is not None else None
                token, probs = choose(logits, config, uniforms, with_probs, self.sampler.banned)
                tokens.append(token)
                logits, inner = stepper.step(token, inner)
        self.logits, self.inner = logits, inner
        token_bytes = self.sampler.tokenizer.token_bytes
        texts = []
        for row, ids in zip(self.rows.tolist(), torch.stack(tokens, dim=1).tolist()):  # one host sync
            text = self.outputs[row].feed(b"".join([token_bytes[i] for i in ids]))
            self.texts[row].append(text)
            texts.append(text)
        return texts, probs

    def next_block(self) -> int:
        """Steps until the furthest-behind running stream could reach its length."""
        per_token = self.sampler.max_token_chars
        need = max(self.outputs[row].remaining() for row in self.rows.tolist())
        return max(1, min(_DECODE_BLOCK, -(-need // per_token)))

    def drop_finished(self) -> None:
        """Remove finished rows from the batch: the others run on without paying for them."""
        keep = [k for k, row in enumerate(self.rows.tolist()) if not self.outputs[row].done]
        if len(keep) == len(self.rows):
            return
        keep_t = torch.tensor(keep, dtype=torch.long, device=self.rows.device)
        self.rows = self.rows[keep_t]
        self.inner = [t[keep_t] for t in self.inner]
        self.logits = self.logits[keep_t]
        if self.random is not None:
            self.random.select(keep_t)

    def store(self, context: Context) -> None:
        """Write the running rows' state and logits into the full-size context."""
        state = self.stepper.leave(self.inner)
        if len(self.rows) == context.batch_size:
            context.state, context.logits = state, self.logits
            return
        context.state = tuple(full.index_copy(1, self.rows, part) for full, part in zip(context.state, state))
        context.logits = context.logits.index_copy(0, self.rows, self.logits)


class Sampler:
    """Sampling from one model. The weights are copied into the fast step's layout once, here:
    build a new Sampler after changing the model.

    With `share_cores` (the thread count is chargen's, not the user's) the step runs on the cores
    other processes leave free (chargen.threads.FairThreads): beside a training run, a sampler
    on both cores waits at every product for the core it shares, and took 3.9x its time alone.
    Only the thread count follows the load, never the step's precision, so a seed gives the same
    text on a busy machine (int8 sums are exact on any number of threads; tests/test_sample.py).
    `load` is where the load is read, for the step's choice and the thread count (the machine's
    by default)."""

    def __init__(
        self,
        model: CharLM,
        tokenizer: Tokenizer,
        device: torch.device | str = "cpu",
        precision: str = "auto",
        share_cores: bool = True,
        load: Load | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        conditions = Conditions() if load is None else Conditions(load=load)
        self.kernel = choose_kernel(model, self.device, precision, conditions)  # auto: measured once per machine
        self._steppers: dict[str, Stepper] = {}
        start = tokenizer.encode("\n")
        self._start_id = int(start[-1]) if len(start) else 0
        self.max_token_chars = max(1, max(len(b.decode("utf-8", "replace")) for b in tokenizer.token_bytes))
        unwritten = unwritten_ids(tokenizer)
        self.banned = torch.tensor(unwritten, device=self.device) if unwritten else None
        most = torch.get_num_threads()
        shared = share_cores and self.device.type == "cpu" and most > 1
        self.fair = FairThreads(most, load=load, every=LOOK_EVERY) if shared else None
        self.fewest_threads: int | None = None  # the fewest the load has left to the steps
        if self.fair is not None:
            self.fair.update()  # the first look: the next one measures from here

    def threads_for(self, kernel_threads: int) -> int:
        """The threads to run the next steps on: the kernel's, fewer while other processes keep
        cores busy."""
        if self.fair is None:
            return kernel_threads
        free = self.fair.update()
        self.fewest_threads = min(free, self.fewest_threads or free)
        return min(kernel_threads, free)

    def load_note(self) -> str | None:
        """What other processes' load did to the thread count, if anything (for --verbose, /info)."""
        if self.fair is None or self.fewest_threads is None or self.fewest_threads >= self.fair.most:
            return None
        plural = "s" if self.fewest_threads > 1 else ""
        return (
            f"other processes kept {self.fair.others:.1f} of the CPUs busy at the last look: "
            f"sampling was left as few as {self.fewest_threads} thread{plural}"
        )

    def stepper_for(self, streams: int) -> Stepper:
        """The step for a batch of `streams` streams, built on first use."""
        batch = self.kernel.nearest(streams)
        precision = self.kernel.kernels[batch].precision
        key = f"{precision} {batch}"
        if key not in self._steppers:
            self._steppers[key] = make_stepper(self.model, self.device, precision, batch)
        return self._steppers[key]

    @property
    def stepper(self) -> Stepper:
        """The step for one stream."""
        return self.stepper_for(1)

    @torch.inference_mode()
    def read(self, texts: Sequence[str], context: Context | None = None) -> Context:
        """Feed one text per stream; with no context, an empty text starts as if after a newline.
        Identical texts from the fresh state are read once; texts of different lengths are read
        together in one packed pass."""
        if not texts:
            raise ValueError("read() needs at least one text (one per stream)")
        if context is None:
            distinct = {text: n for n, text in enumerate(dict.fromkeys(texts))}
            state, logits = self._forward([self._ids(text) for text in distinct], None)
            where = torch.tensor([distinct[text] for text in texts], dtype=torch.long, device=self.device)
            return Context(tuple(s[:, where] for s in state), logits[where])
        rows = [i for i, text in enumerate(texts) if text]
        if not rows:
            return Context(context.state, context.logits)
        index = torch.tensor(rows, device=self.device)
        state, logits = self._forward(
            [self._ids(texts[i]) for i in rows], tuple(s[:, index].contiguous() for s in context.state)
        )
        return Context(
            tuple(full.index_copy(1, index, part) for full, part in zip(context.state, state)),
            context.logits.index_copy(0, index, logits.to(context.logits.dtype)),
        )

    def _ids(self, text: str) -> Tensor:
        ids = self.tokenizer.encode(text).long()
        return ids if len(ids) else torch.tensor([self._start_id])  # a text that encodes to nothing

    def _forward(self, ids: list[Tensor], state: State | None) -> tuple[State, Tensor]:
        """Read a batch of token sequences -> the state after each one's last token, and the
        logits there (B, V)."""
        # oneDNN's LSTM (torch's CPU default) spends ~10 ms per layer and call setting itself up,
        # more than the whole read of a typical priming text takes without it.
        mkldnn = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False  # (its `flags` context manager warns about TF32)
        try:
            return self._forward_rnn(ids, state)
        finally:
            torch.backends.mkldnn.enabled = mkldnn

    def _forward_rnn(self, ids: list[Tensor], state: State | None) -> tuple[State, Tensor]:
        model = self.model
        lengths = [len(x) for x in ids]
        if len(set(lengths)) == 1:
            out, state = model(torch.stack(ids).to(self.device), state)
            return state, out[:, -1].float()
        # Different lengths in one pass: packed, so each row's state is taken at its own last token.
        if state is None:
            state = model.initial_state(len(ids), self.device)
        lengths_t = torch.tensor(lengths)
        padded = pad_sequence(ids, batch_first=True).to(self.device)  # (B, T)
        packed = pack_padded_sequence(model.embed(padded), lengths_t, batch_first=True, enforce_sorted=False)
        out, rnn_state = model.rnn(packed, state if model.config.cell == "lstm" else state[0])
        out, _ = pad_packed_sequence(out, batch_first=True)  # (B, T, H)
        last = out[torch.arange(len(ids)), lengths_t - 1]
        new_state = rnn_state if isinstance(rnn_state, tuple) else (rnn_state,)
        return new_state, model.head.scores(last).float()

    @torch.inference_mode()
    def stream(self, context: Context, config: SampleConfig, first_index: int = 0) -> Iterator[Step]:
        """Extend every stream of `context` until each has `length` characters or hit a stop
        string, yielding each step's new text. The context is updated in place at every step;
        a finished stream's state stays at its last token."""
        run = _Run(self, context, config, first_index)
        while not run.finished:
            rows = run.rows
            texts, probs = run.advance(1, with_probs=True)
            assert probs is not None
            run.store(context)
            step = Step([""] * context.batch_size, torch.zeros(context.batch_size, device=probs.device))
            for row, text in zip(rows.tolist(), texts):
                step.texts[row] = text
            step.probs[rows] = probs
            run.drop_finished()
            yield step

    @torch.inference_mode()
    def completions(self, primes: Sequence[str], config: SampleConfig, first_index: int = 0) -> Iterator[Completion]:
        """The continuation of each priming text, in order, decoding in blocks; MAX_BATCH
        streams at a time, each batch's results yielded as soon as it is done. Stream i of the
        call is stream first_index + i of the seed."""
        if config.seed is None:  # one seed for every batch, so they are distinct streams of it
            config = replace(config, seed=fresh_seed())
        for start in range(0, len(primes), MAX_BATCH):
            run = _Run(self, self.read(primes[start : start + MAX_BATCH]), config, first_index + start)
            while not run.finished:
                run.advance(run.next_block(), with_probs=False)
                run.drop_finished()
            yield from (Completion("".join(t), o.stopped) for t, o in zip(run.texts, run.outputs))

    def generate(self, primes: Sequence[str], config: SampleConfig, first_index: int = 0) -> list[str]:
        """The continuation of each priming text (without the prime)."""
        return [c.text for c in self.completions(primes, config, first_index)]
