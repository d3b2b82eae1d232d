"""How far back the gradient reaches."""

from __future__ import annotations

from itertools import pairwise

import torch

from chargen.analysis.reach import gradient_reach
from chargen.config import ModelConfig
from chargen.model import CharLM


def _curve(cell: str, lags: int = 60) -> list[float]:
    torch.manual_seed(0)
    model = CharLM(ModelConfig(vocab_size=20, cell=cell, layers=1, hidden=32, dropout=0.0))
    return gradient_reach(model, torch.randint(0, 20, (2000,)), lags=lags)


def test_an_rnn_forgets_steadily() -> None:
    curve = _curve("rnn")
    assert len(curve) == 61
    assert all(later < earlier for earlier, later in pairwise(curve[:41]))
    assert curve[40] < 1e-6 * curve[0]


def test_an_lstm_with_its_forget_bias_reaches_further_than_an_rnn() -> None:
    assert _curve("lstm")[30] > 100 * _curve("rnn")[30]


def test_a_short_text_gives_a_shorter_curve() -> None:
    torch.manual_seed(0)
    model = CharLM(ModelConfig(vocab_size=20, cell="gru", layers=2, hidden=8, dropout=0.0))
    curve = gradient_reach(model, torch.randint(0, 20, (12,)), lags=100)
    assert len(curve) == 11 and all(v >= 0 for v in curve)
