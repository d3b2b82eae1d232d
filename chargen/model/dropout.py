"""Dropout whose mask is cheap to draw on a CPU, and the recurrent stack run with it between layers.

torch's CPU dropout draws its mask with `bernoulli_`, about 6 ns per element on 2 cores (Intel
Xeon with AMX, torch 2.13): with the default model's three dropout sites (embedding, between the
layers, output) that was a fifth of a training step, enough to put chargen below a plain loop
without dropout. Here an element is kept or dropped on 16 random bits, four to a 64-bit draw from
torch's own generator (so seeds and saved RNG states work as before): about 2 ns per element,
multiplications forward and back included. The rate is p quantised to 1/65536 and survivors are
scaled by the inverse of that rate, so the expectation is exact. nn.LSTM draws its inter-layer
dropout with `bernoulli_` too, so while training with dropout the layers run one call each with
this dropout between them (the fused CPU kernel runs layer by layer anyway). On GPUs torch's
fused kernels are fast already: there everything stays torch's. The same layer-by-layer call
carries weight drop (DropConnect on the recurrent weights), on any device.

While training on the CPU the masks come from `Masks`: a generator keyed by the run's seed and
step rather than torch's global one, so the ranks of a torchrun group draw together what one
process draws, and a resumed run draws what it would have drawn (from the step alone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import _VF, Tensor, nn

_LEVELS = 1 << 16  # a mask element is one int16
RnnState = Tensor | tuple[Tensor, Tensor]  # (h, c) for an LSTM, h otherwise; each (layers, B, H)
_CALLS = {"LSTM": _VF.lstm, "GRU": _VF.gru, "RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu}


def drop_threshold(p: float) -> int:
    """The int16 value below which an element is dropped: round(p * 65536) of the 65536 values."""
    return round(p * _LEVELS) - _LEVELS // 2


def effective_rate(p: float) -> float:
    """The dropout rate the 16-bit mask draws: p to within 1/131072."""
    return round(p * _LEVELS) / _LEVELS


@dataclass(frozen=True)
class Masks:
    """One training step's masks: every rank draws each activation mask for all `streams` of the
    global batch from the same keyed generator, in the same order, and keeps its own `rows`; a
    weight-drop mask is the whole batch's. One process is the case rows = all streams."""

    generator: torch.Generator
    rows: slice
    streams: int

    @classmethod
    def keyed(cls, seed: int, step: int, rows: slice, streams: int) -> Masks:
        return cls(torch.Generator().manual_seed((seed * 2**32 + step) % 2**64), rows, streams)


def keep_scale(
    shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device, generator: torch.Generator | None = None
) -> Tensor:
    """The mask as factors: 0 with probability effective_rate(p), else 1 / (1 - that rate)."""
    count = shape.numel()
    draws = torch.empty((count + 3) // 4, dtype=torch.int64, device=device)
    draws.random_(-(2**63), None, generator=generator)
    scale = torch.empty(count, dtype=dtype, device=device)
    torch.ge(draws.view(torch.int16)[:count], drop_threshold(p), out=scale)  # straight to 0/1 in dtype
    return scale.mul_(1.0 / (1.0 - effective_rate(p))).view(shape)


def dropout(x: Tensor, p: float, training: bool, masks: Masks | None = None, per_stream: bool = True) -> Tensor:
    """F.dropout's contract (zero with probability p, scale survivors by 1/(1-p)), with a
    cheaper mask on CPUs; with `masks`, drawn from them (x batch first when `per_stream`)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or effective_rate(p) >= 1.0:
        return F.dropout(x, p, training=True)
    if masks is None:
        return x * keep_scale(x.shape, p, x.dtype, x.device)
    if not per_stream:
        return x * keep_scale(x.shape, p, x.dtype, x.device, masks.generator)
    every_stream = torch.Size((masks.streams, *x.shape[1:]))
    return x * keep_scale(every_stream, p, x.dtype, x.device, masks.generator)[masks.rows]


class Dropout(nn.Module):
    """nn.Dropout with chargen's mask; no weights, so checkpoints are unchanged."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor, masks: Masks | None = None) -> Tensor:
        return dropout(x, self.p, self.training, masks)


def run_stack(
    rnn: nn.RNNBase, x: Tensor, state: RnnState, p: float, weight_drop: float = 0.0, masks: Masks | None = None
) -> tuple[Tensor, RnnState]:
    """`rnn(x, state)` (batch first) with dropout p between the layers drawn by `dropout` and,
    with `weight_drop`, each layer's recurrent weights dropped (below): one layer at a time when
    either needs drawing here, else the fused call."""
    if rnn.training and (weight_drop or (p and rnn.num_layers > 1 and x.device.type == "cpu")):
        return layer_by_layer(rnn, x, state, lambda h: dropout(h, p, True, masks), weight_drop, masks)
    return rnn(x, state)


def layer_by_layer(
    rnn: nn.RNNBase,
    x: Tensor,
    state: RnnState,
    between: Callable[[Tensor], Tensor],
    weight_drop: float = 0.0,
    masks: Masks | None = None,
) -> tuple[Tensor, RnnState]:
    """The stack as one single-layer call per layer (rnn's own dropout unused), `between`
    applied to each layer's output that feeds another layer. x (B, T, E) -> (B, T, H).

    weight_drop (DropConnect on the hidden-to-hidden matrix, as in AWD-LSTM) zeroes a fraction
    of W_hh's elements, one mask per call shared by every row and time step: dropping h itself
    would erase the memory the recurrence carries, dropping the weights only perturbs how it is
    read."""
    call = _CALLS[rnn.mode]
    lstm = isinstance(state, tuple)
    finals: list[tuple[Tensor, ...]] = []
    for layer, weights in enumerate(rnn.all_weights):
        if layer:
            x = between(x)
        if weight_drop:
            w_ih, w_hh, *biases = weights
            weights = [w_ih, dropout(w_hh, weight_drop, True, masks, per_stream=False), *biases]
        rows = slice(layer, layer + 1)
        hidden = (state[0][rows], state[1][rows]) if lstm else state[rows]
        x, *last = call(x, hidden, weights, rnn.bias, 1, 0.0, rnn.training, False, True)
        finals.append(tuple(last))
    stacked = tuple(torch.cat(parts) for parts in zip(*finals, strict=True))  # each (layers, B, H)
    return x, (stacked if lstm else stacked[0])
