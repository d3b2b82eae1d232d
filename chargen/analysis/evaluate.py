"""Bits per character of a text under a model, reading the whole text with carried state."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from chargen.data.batches import EvalStreams
from chargen.data.tokenized import token_counts
from chargen.data.tokenizers import Tokenizer, token_chars
from chargen.device import autocast
from chargen.model import CharLM

EVAL_ROWS = 16  # parallel rows for a short text; each warms up on the text before its segment
EVAL_MAX_ROWS = 64  # ...and for a long one, at most
EVAL_BURN_IN = 256
EVAL_SEGMENT = 16 * EVAL_BURN_IN  # tokens per row at least, beyond EVAL_ROWS rows
EVAL_WINDOW = 512


def characters_scored(tokenizer: Tokenizer, ids: torch.Tensor) -> int:
    """Characters the targets (every token after the first) stand for: bits are divided by this,
    so char and subword models on the same text report comparable numbers."""
    per_token = token_chars(tokenizer)
    return max(1, int(token_counts(ids[1:], len(per_token)) @ per_token))


def eval_streams(ids: torch.Tensor) -> EvalStreams:
    """The rows a text is read in: EVAL_ROWS, or for a long text a multiple of it up to
    EVAL_MAX_ROWS, while each segment stays EVAL_SEGMENT tokens long (so warming up adds at most
    1/16 to the reading). Every time step multiplies all rows by the same recurrent weights
    (2 MB per layer in bf16 at the default size), which costs about as much for 64 rows as for
    16: the recurrent part of a 300,000-character evaluation took 6.7 s with 16 rows and 4.2 s
    with 64 on one thread. Multiples of 16 fill the matrix units' tiles (27 rows ran slower)."""
    groups = (len(ids) - 1) // (EVAL_ROWS * EVAL_SEGMENT)
    rows = EVAL_ROWS * max(1, min(EVAL_MAX_ROWS // EVAL_ROWS, groups))
    return EvalStreams.build(ids, rows, EVAL_BURN_IN)


def total_bits(
    model: CharLM,
    streams: EvalStreams,
    device: torch.device,
    dtype: torch.dtype | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> float:
    """Summed over every scored target; `progress` hears (tokens read, tokens in all) per window."""
    return read_bits(model, streams, device, dtype, progress)[0]


@torch.inference_mode()
def read_bits(
    model: CharLM,
    streams: EvalStreams,
    device: torch.device,
    dtype: torch.dtype | None = None,
    progress: Callable[[int, int], None] | None = None,
    within: int | None = None,
) -> tuple[float, float]:
    """Bits summed over every scored target, and over each row's first `within` scored targets
    (the part `streams.limited(within)` reads, from the same pass: a run's last evaluation gives
    the whole tail's figure and the part's, comparable with its earlier ones, at the cost of one)."""
    was_training = model.training
    model.eval()
    state = None
    nats, part_nats = 0.0, 0.0
    length, rows = streams.length, len(streams.spans)
    limits = torch.tensor([start + warm + (within or 0) for start, _, warm in streams.spans])
    for start, (x, y, keep) in zip(range(0, length, EVAL_WINDOW), streams.windows(EVAL_WINDOW)):
        with autocast(device, dtype):
            token_nll, state = model.nll(x.to(device), y.to(device), state)
        token_nll = token_nll.float() * keep.to(device)
        nats += float(token_nll.sum())
        if within is not None:
            at = torch.arange(start, start + x.shape[1]) + torch.tensor([s for s, _, _ in streams.spans])[:, None]
            part_nats += float((token_nll * (at < limits[:, None]).to(device)).sum())
        if progress is not None:
            progress(min(start + EVAL_WINDOW, length) * rows, length * rows)
    model.train(was_training)
    return nats / math.log(2), part_nats / math.log(2)


def bits_per_char(
    model: CharLM,
    ids: torch.Tensor,
    n_chars: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> float:
    return total_bits(model, eval_streams(ids), device, dtype, progress) / n_chars
