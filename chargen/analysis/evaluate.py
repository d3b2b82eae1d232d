"""Bits per character of a text under a model, reading the whole text with carried state."""

from __future__ import annotations

import math

import torch

from chargen.data.batches import EvalStreams
from chargen.device import autocast
from chargen.model import CharLM

EVAL_ROWS = 16  # parallel rows; each warms up on the text before its segment
EVAL_BURN_IN = 256
EVAL_WINDOW = 512


def characters_scored(text: str, first_token_text: str) -> int:
    """Characters predicted when every token after the first is scored: bits are divided by
    this, so char and subword models on the same text report comparable numbers."""
    return max(1, len(text) - len(first_token_text))


@torch.inference_mode()
def total_bits(
    model: CharLM,
    streams: EvalStreams,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> float:
    was_training = model.training
    model.eval()
    state = None
    nats = 0.0
    length = streams.inputs.shape[1]
    for start in range(0, length, EVAL_WINDOW):
        x = streams.inputs[:, start : start + EVAL_WINDOW].to(device)
        y = streams.targets[:, start : start + EVAL_WINDOW].to(device)
        keep = streams.scored[:, start : start + EVAL_WINDOW].to(device)
        with autocast(device, dtype):
            token_nll, state = model.nll(x, y, state)
        nats += float((token_nll * keep).sum())
    model.train(was_training)
    return nats / math.log(2)


def bits_per_char(
    model: CharLM,
    ids: torch.Tensor,
    n_chars: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> float:
    streams = EvalStreams.build(ids, EVAL_ROWS, EVAL_BURN_IN)
    return total_bits(model, streams, device, dtype) / n_chars
