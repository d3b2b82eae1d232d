"""How a held-out text is read: a short one in EVAL_ROWS rows, a long one in more rows (each
segment still long), with the same bits per character as before within a small margin."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chargen.analysis.evaluate import EVAL_BURN_IN, EVAL_ROWS, EVAL_SEGMENT, eval_streams, total_bits
from chargen.checkpoint import load_model
from chargen.data.batches import EvalStreams
from tests.helpers import SHAKESPEARE, needs_shakespeare


@pytest.mark.parametrize(
    ("tokens", "rows"),
    [(5, 1), (20_000, 16), (111_000, 16), (140_000, 32), (200_000, 48), (300_000, 64), (5_000_000, 64)],
)
def test_long_texts_are_read_in_more_rows_of_at_least_a_segment_each(tokens: int, rows: int) -> None:
    streams = eval_streams(torch.zeros(tokens, dtype=torch.int16))
    assert len(streams.spans) == rows
    if rows > EVAL_ROWS:
        assert min(last - start - warm for start, last, warm in streams.spans) >= EVAL_SEGMENT


@needs_shakespeare
def test_more_rows_give_the_bits_per_character_of_the_old_sixteen(tiny_checkpoint: Path) -> None:
    loaded = load_model(tiny_checkpoint)
    ids = loaded.tokenizer.encode(SHAKESPEARE.read_text(encoding="utf-8")[:300_000])
    device = torch.device("cpu")
    many = eval_streams(ids)
    sixteen = EvalStreams.build(ids, EVAL_ROWS, EVAL_BURN_IN)
    assert len(many.spans) == 64
    bits_many, bits_sixteen = total_bits(loaded.model, many, device), total_bits(loaded.model, sixteen, device)
    assert bits_many == pytest.approx(bits_sixteen, rel=1e-3)
