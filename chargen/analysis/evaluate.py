"""Bits per character of a text under a model, reading the whole text with carried state."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from chargen.data.batches import EvalStreams
from chargen.data.tokenizers import Tokenizer, token_chars
from chargen.device import autocast
from chargen.model import CharLM

EVAL_ROWS = 16  # parallel rows; each warms up on the text before its segment
EVAL_BURN_IN = 256
EVAL_WINDOW = 512
_COUNT_BLOCK = 1 << 20


def characters_scored(tokenizer: Tokenizer, ids: torch.Tensor) -> int:
    """Characters the targets (every token after the first) stand for: bits are divided by this,
    so char and subword models on the same text report comparable numbers. Counted in blocks, as
    the ids may be a memory map of any size."""
    per_token = token_chars(tokenizer)
    total = 0
    for start in range(1, len(ids), _COUNT_BLOCK):
        block = ids[start : start + _COUNT_BLOCK].numpy()  # 1-4 MB of the map; 8 MB as counted
        total += int(np.bincount(block.astype(np.int64), minlength=len(per_token)) @ per_token)
    return max(1, total)


@torch.inference_mode()
def total_bits(
    model: CharLM,
    streams: EvalStreams,
    device: torch.device,
    dtype: torch.dtype | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> float:
    """Summed over every scored target; `progress` hears (tokens read, tokens in all) per window."""
    was_training = model.training
    model.eval()
    state = None
    nats = 0.0
    length, rows = streams.length, len(streams.spans)
    for start, (x, y, keep) in zip(range(0, length, EVAL_WINDOW), streams.windows(EVAL_WINDOW)):
        with autocast(device, dtype):
            token_nll, state = model.nll(x.to(device), y.to(device), state)
        nats += float((token_nll * keep.to(device)).sum())
        if progress is not None:
            progress(min(start + EVAL_WINDOW, length) * rows, length * rows)
    model.train(was_training)
    return nats / math.log(2)


def bits_per_char(
    model: CharLM,
    ids: torch.Tensor,
    n_chars: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> float:
    streams = EvalStreams.build(ids, EVAL_ROWS, EVAL_BURN_IN)
    return total_bits(model, streams, device, dtype, progress) / n_chars
