"""One-token steps for sampling: the model's weights rearranged so a batch of streams advances
a token at a time with as little work per step as possible.

Sampling is a loop of tiny steps, so what costs is Python overhead per operation and reading
the weights once per step, not arithmetic. The fast LSTM step therefore
- folds the embedding, the first layer's input weights and all its biases into one table
  (V, 4H): the first layer's input half becomes a row lookup;
- computes each higher layer's gates in one matmul over [input, h] with pre-concatenated,
  pre-transposed weights;
- uses one sigmoid for all four gates and none of torch's tanh (several times slower on the
  CPU), through tanh(x) = 2 sigmoid(2x) - 1, with the factors folded into weights and state;
- in int8 precision, stores weights as int8 with one scale per output row, and h (always in
  (-1, 1)) as int8 with the fixed scale 1/127. The matmul is then exact integer arithmetic,
  reads a quarter of the bytes, and gives each stream the same result whatever else is in
  the batch (a dynamic per-batch activation scale would not).
GRU and RNN models use the model's own forward, one token at a time.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from chargen.errors import ConfigError
from chargen.model import CharLM, State

_H_SCALE = 127.0  # h of an LSTM lies in (-1, 1): int8 h = round(127 h)
_TABLE_LIMIT = 1 << 26  # floats; above this (huge vocabularies) layer 0 is computed, not looked up


class Stepper(Protocol):
    """Advance every stream by one token. `inner` is the stepper's own form of the state."""

    precision: str

    def enter(self, state: State) -> list[Tensor]: ...

    def leave(self, inner: list[Tensor]) -> State: ...

    def step(self, tokens: Tensor, inner: list[Tensor]) -> tuple[Tensor, list[Tensor]]: ...


def int8_available(device: torch.device) -> bool:
    return device.type == "cpu" and hasattr(torch, "_int_mm")


def resolve_precision(precision: str, model: CharLM, device: torch.device) -> str:
    """'auto' is int8 where it is fast (an LSTM on the CPU), fp32 elsewhere."""
    if precision not in ("auto", "fp32", "int8"):
        raise ConfigError(f"--precision must be auto, fp32 or int8, got {precision!r}")
    fast_int8 = model.config.cell == "lstm" and int8_available(device)
    if precision == "auto":
        return "int8" if fast_int8 else "fp32"
    if precision == "int8" and not fast_int8:
        raise ConfigError("--precision int8 needs an LSTM model on the CPU; use --precision fp32")
    return precision


def make_stepper(model: CharLM, device: torch.device, precision: str = "auto") -> Stepper:
    precision = resolve_precision(precision, model, device)
    if model.config.cell == "lstm":
        return LSTMStepper(model, device, precision)
    return ModelStepper(model)


class ModelStepper:
    """Any cell: the model's own forward over one token."""

    precision = "fp32"

    def __init__(self, model: CharLM) -> None:
        self.model = model

    def enter(self, state: State) -> list[Tensor]:
        return list(state)

    def leave(self, inner: list[Tensor]) -> State:
        return tuple(inner)

    def step(self, tokens: Tensor, inner: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        out, state = self.model(tokens[:, None], tuple(inner))  # (B, 1, V)
        return out[:, -1], list(state)


def _lstm_gates(weight: Tensor, hidden: int) -> Tensor:
    """nn.LSTM stacks gate rows as (i, f, g, o). Reorder to (i, f, o, g) and double g's rows, so
    one sigmoid serves all four gates: tanh(x) = 2 sigmoid(2x) - 1 (tanh is several times
    slower than sigmoid on the CPU)."""
    i, f, g, o = weight.split(hidden, dim=0)
    return torch.cat([i, f, o, 2 * g])


def _quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per output row -> (int8 weight (N, K), scale (N,)) with weight ~ q * scale."""
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    return (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale


class LSTMStepper:
    """The fast step for LSTM models, in fp32 (same tokens as the model) or with int8 weights.

    Inner state per layer: hs = h * h_scale (B, H) fp32, cc = 2c (B, H) fp32 and, in int8,
    round(hs) as int8 (B, H); h_scale is 127 in int8 and 1 in fp32. Keeping 2c and a scaled h
    saves an operation per layer and step; `enter` and `leave` convert.
    """

    def __init__(self, model: CharLM, device: torch.device, precision: str) -> None:
        config = model.config
        H = config.hidden
        self.precision = precision
        self.layers = config.layers
        self._int8 = precision == "int8"
        self._h_scale = _H_SCALE if self._int8 else 1.0
        self._width = 3 if self._int8 else 2  # inner tensors per layer

        def param(tensor: Tensor) -> Tensor:
            return tensor.detach().to(device=device, dtype=torch.float32)

        rnn = {name: param(p) for name, p in model.rnn.named_parameters()}
        with torch.no_grad():
            w_ih0 = _lstm_gates(rnn["weight_ih_l0"], H)
            bias0 = _lstm_gates(rnn["bias_ih_l0"] + rnn["bias_hh_l0"], H)
            embed = param(model.embed.weight)
            if embed.shape[0] * 4 * H <= _TABLE_LIMIT:
                self._table: Tensor | None = torch.addmm(bias0, embed, w_ih0.t())  # (V, 4H)
            else:
                self._table = None
                self._embed, self._w_ih0_t, self._bias0 = embed, w_ih0.t().contiguous(), bias0
            self._weights: list[Tensor] = []  # per layer (K, 4H)
            self._scales: list[Tensor] = []  # int8: per layer (4H,): row scale / h_scale
            self._biases: list[Tensor] = []  # layers >= 1: (4H,)
            for layer in range(config.layers):
                weight = _lstm_gates(rnn[f"weight_hh_l{layer}"], H)  # layer 0: its input part is the table
                if layer:
                    weight = torch.cat([_lstm_gates(rnn[f"weight_ih_l{layer}"], H), weight], dim=1)  # on [x, h]
                    self._biases.append(_lstm_gates(rnn[f"bias_ih_l{layer}"] + rnn[f"bias_hh_l{layer}"], H))
                if self._int8:
                    q, scale = _quantize_rows(weight)
                    self._weights.append(q.t())  # _int_mm is fastest on this transposed view
                    self._scales.append(scale / _H_SCALE)
                else:
                    self._weights.append(weight.t().contiguous())
            self._scores = model.head.step_scorer(device, self._h_scale)  # hs (B, H) -> (B, V)

    def enter(self, state: State) -> list[Tensor]:
        h, c = state  # each (layers, B, H)
        inner = []
        for layer in range(self.layers):
            hs = h[layer].float() * self._h_scale
            inner += [hs, c[layer].float() * 2]
            if self._int8:
                inner.append(hs.round().to(torch.int8))
        return inner

    def leave(self, inner: list[Tensor]) -> State:
        h = torch.stack(inner[0 :: self._width]) / self._h_scale
        return h, torch.stack(inner[1 :: self._width]) / 2

    def _input_gates(self, tokens: Tensor) -> Tensor:
        if self._table is not None:
            return F.embedding(tokens, self._table)  # (B, 4H): a row lookup
        return torch.addmm(self._bias0, F.embedding(tokens, self._embed), self._w_ih0_t)

    def step(self, tokens: Tensor, inner: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """tokens (B,) -> next-token scores (B, V) (softmax-ready) and the new state."""
        width, h_scale = self._width, self._h_scale
        new: list[Tensor] = []
        below: Tensor | None = None  # the layer below's new h, as this layer's input
        for layer in range(self.layers):
            hs, cc = inner[layer * width], inner[layer * width + 1]
            base = self._input_gates(tokens) if layer == 0 else self._biases[layer - 1]
            if self._int8:
                x = inner[layer * width + 2]
                x = x if below is None else torch.cat([below, x], dim=1)
                gates = torch.addcmul(base, torch._int_mm(x, self._weights[layer]), self._scales[layer])
            else:
                x = hs if below is None else torch.cat([below, hs], dim=1)
                gates = torch.addmm(base, x, self._weights[layer])  # (B, 4H)
            i, f, o, g = gates.sigmoid_().chunk(4, dim=1)  # g holds sigmoid(2 g): tanh(g) = 2 g - 1
            cc = (f * cc).sub_(i, alpha=2).addcmul_(i, g, value=4)  # 2c' = f 2c + 2 i tanh(g)
            hs = torch.addcmul(o * -h_scale, o, cc.sigmoid(), value=2 * h_scale)  # h_scale o tanh(c')
            if self._int8:
                below = hs.round().to(torch.int8)
                new += [hs, cc, below]
            else:
                below = hs
                new += [hs, cc]
        return self._scores(new[-width]), new
