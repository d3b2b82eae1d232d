"""What the recurrent cells track, after Karpathy, Johnson and Fei-Fei, "Visualizing and
Understanding Recurrent Networks" (2015): each layer is re-run alone to expose its cells and
gates; cells are matched to simple properties of the text by correlation; gate saturation is
how often each gate sits near 0 or 1.

The activation of a cell is tanh(c) for an LSTM (the paper's choice) and the hidden state h
for a GRU or a plain RNN, which have no separate cell state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from chargen.model import CharLM

SATURATED = 0.1  # a gate below 0.1 is left-saturated, above 0.9 right-saturated
GATE_NAMES = {"lstm": ("input", "forget", "output"), "gru": ("reset", "update"), "rnn": ()}
_CHUNK = 4096  # time steps whose gate pre-activations are held at once
_KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


@dataclass
class LayerTrace:
    activations: np.ndarray  # (T, H) float16: each cell after reading each token
    left: dict[str, np.ndarray]  # gate -> (H,) fraction of steps the gate was below SATURATED
    right: dict[str, np.ndarray]  # gate -> (H,) fraction of steps above 1 - SATURATED


@dataclass
class Match:
    prop: str
    layer: int
    cell: int
    correlation: float  # Pearson r of the cell's activation with the property (sign kept)


def _single_layer(model: CharLM, layer: int) -> nn.RNNBase:
    """Layer `layer` of the model's stack as a one-layer module of the same kind."""
    rnn = model.rnn
    one = type(rnn)(rnn.input_size if layer == 0 else rnn.hidden_size, rnn.hidden_size, batch_first=True)
    one.load_state_dict({f"{key}_l0": getattr(rnn, f"{key}_l{layer}") for key in _KEYS})
    return one.to(next(model.parameters()).device).eval()


@torch.inference_mode()
def trace_layers(model: CharLM, ids: Tensor) -> list[LayerTrace]:
    """Read `ids` (T,) in one pass from a zero state, layer by layer."""
    model.eval()
    device = next(model.parameters()).device
    x = model.embed(ids.long().to(device)).unsqueeze(0)  # (1, T, E)
    traces = []
    for layer in range(model.config.layers):
        module = _single_layer(model, layer)
        h, _ = module(x)  # (1, T, H)
        traces.append(_gates(module, model.config.cell, x[0], h[0]))
        x = h
    return traces


def _gates(module: nn.RNNBase, cell: str, x: Tensor, h: Tensor) -> LayerTrace:
    """Gates and cell states recomputed from the layer's inputs and its known outputs: every
    pre-activation at once; only the LSTM's cell state needs a step-by-step scan."""
    hidden = h.shape[1]
    h_prev = torch.cat([torch.zeros_like(h[:1]), h[:-1]])
    names = GATE_NAMES[cell]
    left = {n: torch.zeros(hidden, dtype=torch.float64) for n in names}
    right = {n: torch.zeros(hidden, dtype=torch.float64) for n in names}
    activations = np.empty(tuple(h.shape), dtype=np.float16)
    c = np.zeros(hidden, dtype=np.float32)
    for start in range(0, len(h), _CHUNK):
        span = slice(start, start + _CHUNK)
        gi = x[span] @ module.weight_ih_l0.T + module.bias_ih_l0  # (t, G*H)
        gh = h_prev[span] @ module.weight_hh_l0.T + module.bias_hh_l0
        if cell == "lstm":
            i, f, g, o = (gi + gh).chunk(4, dim=1)
            i, f, o, g = i.sigmoid(), f.sigmoid(), o.sigmoid(), g.tanh()
            forget, written = f.cpu().numpy(), (i * g).cpu().numpy()
            cells = np.empty_like(written)
            for t in range(len(cells)):  # c_t = f_t * c_(t-1) + i_t * g_t
                c = forget[t] * c + written[t]
                cells[t] = c
            gates, shown = (i, f, o), np.tanh(cells)
        elif cell == "gru":
            r, z = (gi[:, : 2 * hidden] + gh[:, : 2 * hidden]).sigmoid().chunk(2, dim=1)
            gates, shown = (r, z), h[span]
        else:
            gates, shown = (), h[span]
        for name, gate in zip(names, gates):
            left[name] += (gate < SATURATED).sum(0)
            right[name] += (gate > 1 - SATURATED).sum(0)
        activations[span] = shown if isinstance(shown, np.ndarray) else shown.cpu().numpy()
    steps = max(len(h), 1)
    return LayerTrace(
        activations,
        {n: (v / steps).numpy() for n, v in left.items()},
        {n: (v / steps).numpy() for n, v in right.items()},
    )


def text_properties(pieces: list[str]) -> dict[str, np.ndarray]:
    """Simple properties of the text after each token (at its last character)."""
    names = ("inside quotes", "inside brackets", "position in line", "indentation", "start of a word")
    values = {n: np.zeros(len(pieces), dtype=np.float32) for n in names}
    quoted, depth, column, indent, at_line_start, previous = False, 0, 0, 0, True, "\n"
    word_start = False
    for index, piece in enumerate(pieces):
        for ch in piece:
            quoted ^= ch == '"'
            depth = max(0, depth + (ch in "([{") - (ch in ")]}"))
            if ch == "\n":
                column, indent, at_line_start = 0, 0, True
            else:
                column += 1
                if at_line_start and ch in " \t":
                    indent += 1
                else:
                    at_line_start = False
            word_start = ch.isalnum() and not previous.isalnum()
            previous = ch
        values["inside quotes"][index] = quoted
        values["inside brackets"][index] = depth > 0
        values["position in line"][index] = column
        values["indentation"][index] = indent
        values["start of a word"][index] = word_start
    return values


def best_cells(traces: list[LayerTrace], properties: dict[str, np.ndarray]) -> list[Match]:
    """For each property that varies in the text, the cell whose activation correlates with it
    most strongly (either sign)."""
    matches = []
    for prop, values in properties.items():
        p = values.astype(np.float64) - values.mean()
        if not np.any(p):
            continue
        p /= np.linalg.norm(p)
        best: Match | None = None
        for layer, trace in enumerate(traces):
            a = trace.activations.astype(np.float32)
            a -= a.mean(0)
            norms = np.linalg.norm(a, axis=0)
            r = np.divide(p.astype(np.float32) @ a, norms, out=np.zeros(a.shape[1], np.float32), where=norms > 1e-6)
            cell = int(np.abs(r).argmax())
            if best is None or abs(r[cell]) > abs(best.correlation):
                best = Match(prop, layer, cell, float(r[cell]))
        if best is not None:
            matches.append(best)
    return matches
