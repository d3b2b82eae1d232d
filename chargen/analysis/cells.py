"""What the recurrent cells track, after Karpathy, Johnson and Fei-Fei, "Visualizing and
Understanding Recurrent Networks" (2015): the recurrence is scanned step by step to expose every
layer's cells and gates; cells are matched to simple properties of the text by correlation; gate saturation is
how often each gate sits near 0 or 1.

The activation of a cell is tanh(c) for an LSTM (the paper's choice) and the hidden state h
for a GRU or a plain RNN, which have no separate cell state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from chargen.data.batches import EvalStreams
from chargen.model import CharLM

SATURATED = 0.1  # a gate below 0.1 is left-saturated, above 0.9 right-saturated
GATE_NAMES = {"lstm": ("input", "forget", "output"), "gru": ("reset", "update"), "rnn": ()}
# A long text is read as parallel rows of TRACE_ROW tokens, each first reading the TRACE_BURN_IN
# tokens before it; a step then advances every row at once, so the scan takes T / rows steps.
TRACE_ROW = 4096
TRACE_BURN_IN = 1024
_CHUNK = 256  # time steps whose input projections are computed in one matmul


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


# One step of each cell, as torch computes it (gates ordered as in its weights). In: the input
# projection gi (rows, G*H), the recurrent one gh, the state. Out: the new state, what the report
# shows of each cell (tanh(c) for an LSTM, the paper's choice; h otherwise) and the gates (rows, G*H).
def _lstm_step(gi: Tensor, gh: Tensor, state: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
    i, f, g, o = (gi + gh).chunk(4, dim=1)
    i, f, o = i.sigmoid(), f.sigmoid(), o.sigmoid()
    c = f * state[1] + i * g.tanh()
    shown = c.tanh()
    return (o * shown, c), shown, torch.cat((i, f, o), dim=1)


def _gru_step(gi: Tensor, gh: Tensor, state: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
    hidden = state[0].shape[1]
    reset_update = (gi[:, : 2 * hidden] + gh[:, : 2 * hidden]).sigmoid()
    r, z = reset_update.chunk(2, dim=1)
    n = (gi[:, 2 * hidden :] + r * gh[:, 2 * hidden :]).tanh()
    h = n + z * (state[0] - n)
    return (h,), h, reset_update


def _rnn_step(gi: Tensor, gh: Tensor, state: tuple[Tensor, ...]) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
    h = (gi + gh).tanh()
    return (h,), h, h[:, :0]


_STEPS = {"lstm": _lstm_step, "gru": _gru_step, "rnn": _rnn_step}


@torch.inference_mode()
def trace_layers(model: CharLM, ids: Tensor) -> list[LayerTrace]:
    """Read `ids` (T,) and record every layer's cells and gates at every token.

    The recurrence is scanned here rather than by the torch module, so that the gates come out of
    the one pass that computes the states. A text shorter than two rows is read exactly, in one
    pass from a zero state; a longer one as warmed-up parallel rows (see TRACE_ROW), which is
    how `chargen eval` reads too.
    """
    model.eval()
    config, rnn = model.config, model.rnn
    device = next(model.parameters()).device
    # One more token, so that the streams' inputs cover every token of `ids` once.
    padded = torch.cat([ids.long(), ids[-1:].long()])
    streams = EvalStreams.build(padded, max(1, len(ids) // TRACE_ROW), TRACE_BURN_IN)
    inputs, _, kept = next(streams.windows(streams.length))  # (rows, L): every row whole
    # Position of each kept (row, step) in the text: row-major order is text order.
    where = (kept.flatten().cumsum(0) - 1).view(kept.shape)
    step = _STEPS[config.cell]
    names = GATE_NAMES[config.cell]
    # Weights transposed once into the layout the per-step matmul reads fastest.
    weights = [
        {key: getattr(rnn, f"{key}_l{layer}") for key in ("bias_ih", "bias_hh")}
        | {key: getattr(rnn, f"{key}_l{layer}").T.contiguous() for key in ("weight_ih", "weight_hh")}
        for layer in range(config.layers)
    ]
    states = [tuple(s[layer] for s in model.initial_state(len(inputs), device)) for layer in range(config.layers)]
    activations = [np.empty((len(ids), config.hidden), dtype=np.float16) for _ in weights]
    left = [torch.zeros(len(names) * config.hidden, dtype=torch.float64) for _ in weights]
    right = [torch.zeros(len(names) * config.hidden, dtype=torch.float64) for _ in weights]
    for start in range(0, inputs.shape[1], _CHUNK):
        span = slice(start, start + _CHUNK)
        keep, at = kept[:, span], where[:, span][kept[:, span]]
        x = model.embed(inputs[:, span].to(device))  # (rows, t, E)
        for layer, w in enumerate(weights):
            gi = x @ w["weight_ih"] + w["bias_ih"]  # (rows, t, G*H)
            outputs, shown, gates = [], [], []
            for t in range(gi.shape[1]):
                states[layer], cell_view, gate_values = step(
                    gi[:, t], torch.addmm(w["bias_hh"], states[layer][0], w["weight_hh"]), states[layer]
                )
                outputs.append(states[layer][0])
                shown.append(cell_view)
                gates.append(gate_values)
            x = torch.stack(outputs, dim=1)  # (rows, t, H): the next layer's input
            activations[layer][at.numpy()] = torch.stack(shown, dim=1)[keep].cpu().numpy()
            counted = torch.stack(gates, dim=1)[keep]  # (kept, G*H)
            left[layer] += (counted < SATURATED).sum(0)
            right[layer] += (counted > 1 - SATURATED).sum(0)
    steps = max(len(ids), 1)
    return [
        LayerTrace(
            activations[layer],
            {n: v.numpy() / steps for n, v in zip(names, left[layer].chunk(max(len(names), 1)))},
            {n: v.numpy() / steps for n, v in zip(names, right[layer].chunk(max(len(names), 1)))},
        )
        for layer in range(config.layers)
    ]


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
