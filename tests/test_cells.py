"""Cells matched to properties of the text, and gate saturation, on models whose behaviour is known."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from chargen.analysis.cells import GATE_NAMES, TRACE_ROW, best_cells, text_properties, trace_layers
from chargen.config import ModelConfig
from chargen.data.tokenizers import CharTokenizer
from chargen.model import CharLM

QUOTE_CELL = 5


def _quoted_text(seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["the", "king", "said", "and", "went", "home", "to", "bed", "a", "horse"]
    parts = []
    for _ in range(120):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))
        parts.append(f'"{sentence}"' if rng.random() < 0.5 else sentence)
    return " ".join(parts) + "\n"


def _model_with_a_quote_cell(tokenizer: CharTokenizer) -> CharLM:
    """A random LSTM whose cell QUOTE_CELL flips its sign at every '"' and holds it otherwise:
    the input gate opens and the forget gate closes only on a quote, and the new value is minus
    the cell's own output."""
    torch.manual_seed(0)
    model = CharLM(ModelConfig(vocab_size=tokenizer.vocab_size, layers=1, hidden=16, embed=8, dropout=0.0))
    hidden, k = 16, QUOTE_CELL
    quote = int(tokenizer.encode('"')[0])
    rnn = model.rnn
    with torch.no_grad():
        model.embed.weight[:, 0] = 0.0
        model.embed.weight[quote, 0] = 1.0
        rows = {gate: gate * hidden + k for gate in range(4)}  # i, f, g, o
        for row in rows.values():
            rnn.weight_ih_l0[row] = 0.0
            rnn.weight_hh_l0[row] = 0.0
            rnn.bias_hh_l0[row] = 0.0
        rnn.weight_ih_l0[rows[0], 0], rnn.bias_ih_l0[rows[0]] = 20.0, -10.0  # input gate: open on a quote
        rnn.weight_ih_l0[rows[1], 0], rnn.bias_ih_l0[rows[1]] = -20.0, 10.0  # forget gate: closed on a quote
        rnn.weight_hh_l0[rows[2], k], rnn.bias_ih_l0[rows[2]] = -10.0, 3.0  # new value: minus the present sign
        rnn.bias_ih_l0[rows[3]] = 10.0  # output gate open
    return model.eval()


def test_the_cell_forced_to_track_quotes_is_found() -> None:
    text = _quoted_text()
    tokenizer = CharTokenizer.train(text)
    model = _model_with_a_quote_cell(tokenizer)
    ids = tokenizer.encode(text)
    matches = best_cells(trace_layers(model, ids), text_properties(list(text)))
    quotes = next(m for m in matches if m.prop == "inside quotes")
    assert (quotes.layer, quotes.cell) == (0, QUOTE_CELL)
    assert quotes.correlation > 0.95


def test_properties_follow_quotes_brackets_lines_and_words() -> None:
    props = text_properties(list('a "b" (c\n  d'))
    assert props["inside quotes"].tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert props["inside brackets"].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert props["position in line"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2, 3]
    assert props["indentation"].tolist()[-3:] == [1, 2, 2]
    assert props["start of a word"].tolist() == [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1]


@pytest.mark.parametrize("length", [300, 2 * TRACE_ROW + 99], ids=["one pass", "parallel rows"])
@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_the_top_layer_of_a_gru_or_rnn_trace_is_the_models_own_output(cell: str, length: int) -> None:
    torch.manual_seed(0)
    model = CharLM(ModelConfig(vocab_size=12, cell=cell, layers=2, hidden=8, dropout=0.0)).eval()
    ids = torch.randint(0, 12, (length,))
    traces = trace_layers(model, ids)
    with torch.no_grad():
        out, _ = model.encode(ids.unsqueeze(0))
    assert traces[-1].activations.shape == (length, 8)
    np.testing.assert_allclose(traces[-1].activations, out[0].numpy(), atol=2e-3)  # float16 storage
    assert sorted(traces[0].left) == sorted(GATE_NAMES[cell])


def test_an_lstm_trace_shows_tanh_of_the_cell_state_the_model_carries() -> None:
    torch.manual_seed(0)
    model = CharLM(ModelConfig(vocab_size=12, layers=2, hidden=8, dropout=0.0)).eval()
    ids = torch.randint(0, 12, (200,))
    traces = trace_layers(model, ids)
    cells, state = [], None
    with torch.no_grad():
        for t in range(len(ids)):
            _, state = model.encode(ids[t : t + 1].unsqueeze(0), state)
            cells.append(state[1][:, 0].tanh())  # (layers, H)
    expected = torch.stack(cells, dim=1).numpy()  # (layers, T, H)
    for layer, trace in enumerate(traces):
        np.testing.assert_allclose(trace.activations, expected[layer], atol=2e-3)


def test_gate_saturation_is_a_fraction_per_unit() -> None:
    text = _quoted_text()
    tokenizer = CharTokenizer.train(text)
    traces = trace_layers(_model_with_a_quote_cell(tokenizer), tokenizer.encode(text))
    forget_left = traces[0].left["forget"]
    assert forget_left.shape == (16,)
    assert ((forget_left >= 0) & (forget_left <= 1)).all()
    # The quote cell's forget gate closes exactly on quotes and stays wide open elsewhere.
    share_of_quotes = text.count('"') / len(text)
    assert forget_left[QUOTE_CELL] == pytest.approx(share_of_quotes, abs=1e-3)
    assert traces[0].right["forget"][QUOTE_CELL] == pytest.approx(1 - share_of_quotes, abs=1e-3)
