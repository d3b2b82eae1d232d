"""One-token steps for sampling: the model's weights rearranged so a batch of streams advances
a token at a time with as little work per step as possible.

Sampling is a loop of tiny steps, so what costs is Python overhead per operation and reading
the weights once per step, not arithmetic. The fast LSTM step therefore
- folds the embedding, the first layer's input weights and all its biases into one table
  (V, 4H): the first layer's input half becomes a row lookup;
- computes each higher layer's gates in one product over [input, h] with pre-concatenated
  weights, in whichever precision and library `precision` names (chargen.generation.products);
- uses one sigmoid for all four gates and none of torch's tanh (several times slower on the
  CPU), through tanh(x) = 2 sigmoid(2x) - 1, with the factors folded into weights and state.
GRU and RNN models use the model's own forward, one token at a time. Where the native step is
built and the CPU has the instructions, `int8-fused` runs a whole LSTM step in one call
(chargen.generation.fused).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from chargen.errors import ConfigError
from chargen.generation import fused
from chargen.generation.products import KINDS, InputGates
from chargen.model import CharLM, State

PRECISIONS = (*KINDS, fused.PRECISION)


class Stepper(Protocol):
    """Advance every stream by one token. `inner` is the stepper's own form of the state, each
    tensor with the streams on dim 0 (the sampler drops finished streams by indexing it); `step`
    may update it in place (the native step does), so a state to keep goes through `leave`."""

    precision: str

    def enter(self, state: State) -> list[Tensor]: ...

    def leave(self, inner: list[Tensor]) -> State: ...

    def step(self, tokens: Tensor, inner: list[Tensor]) -> tuple[Tensor, list[Tensor]]: ...


def step_precisions(model: CharLM, device: torch.device) -> list[str]:
    """The precisions this model's step can run in here: every usable product for an LSTM on the
    CPU (elsewhere the libraries behind int8 and packed bf16 do not run) and the native step
    where it runs, fp32 otherwise."""
    if model.config.cell != "lstm" or device.type != "cpu":
        return ["fp32"]
    return [name for name in PRECISIONS if precision_usable(name)]


def precision_usable(name: str) -> bool:
    """Whether the LSTM step in `name` runs on this machine's CPU and torch build."""
    return fused.available() if name == fused.PRECISION else KINDS[name].usable()


def resolve_precision(precision: str, model: CharLM, device: torch.device) -> str:
    """'auto' is the first usable product after fp32 (int8 where it runs); the others are checked."""
    if precision != "auto" and precision not in PRECISIONS:
        raise ConfigError(f"--precision must be auto or one of {', '.join(PRECISIONS)}, got {precision!r}")
    usable = step_precisions(model, device)
    if precision == "auto":
        return usable[1] if len(usable) > 1 else usable[0]
    if precision not in usable:
        raise ConfigError(
            f"--precision {precision} does not run for this model on this machine; use one of {', '.join(usable)}"
        )
    return precision


def make_stepper(model: CharLM, device: torch.device, precision: str = "auto", batch: int = 1) -> Stepper:
    """The step in `precision`; `batch` is the number of streams expected (a layout hint)."""
    precision = resolve_precision(precision, model, device)
    if precision == fused.PRECISION:
        return fused.FusedLSTMStepper(model, device)
    if model.config.cell == "lstm":
        return LSTMStepper(model, device, precision, batch)
    return ModelStepper(model)


class ModelStepper:
    """Any cell: the model's own forward over one token."""

    precision = "fp32"

    def __init__(self, model: CharLM) -> None:
        self.model = model

    def enter(self, state: State) -> list[Tensor]:
        return [s.transpose(0, 1) for s in state]  # each (layers, B, H) -> (B, layers, H)

    def leave(self, inner: list[Tensor]) -> State:
        return tuple(s.transpose(0, 1).contiguous() for s in inner)

    def step(self, tokens: Tensor, inner: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        out, state = self.model(tokens[:, None], self.leave(inner))  # (B, 1, V)
        return out[:, -1], self.enter(state)


def _lstm_gates(weight: Tensor, hidden: int) -> Tensor:
    """nn.LSTM stacks gate rows as (i, f, g, o). Reorder to (i, f, o, g) and double g's rows, so
    one sigmoid serves all four gates: tanh(x) = 2 sigmoid(2x) - 1 (tanh is several times
    slower than sigmoid on the CPU)."""
    i, f, g, o = weight.split(hidden, dim=0)
    return torch.cat([i, f, o, 2 * g])


class LSTMStepper:
    """The fast step for LSTM models, in fp32 (same tokens as the model) or another product.

    Inner state per layer: hs = h * h_scale (B, H) and cc = 2c (B, H), both fp32; h_scale is
    the product's (127 for int8, 1 otherwise). Keeping 2c and a scaled h saves an operation per
    layer and step; `enter` and `leave` convert.
    """

    def __init__(self, model: CharLM, device: torch.device, precision: str, batch: int = 1) -> None:
        config = model.config
        H = config.hidden
        kind = KINDS[precision]
        self.precision = precision
        self.layers = config.layers
        self._h_scale = kind.h_scale

        def param(tensor: Tensor) -> Tensor:
            return tensor.detach().to(device=device, dtype=torch.float32)

        rnn = {name: param(p) for name, p in model.rnn.named_parameters()}
        with torch.no_grad():
            w_ih0 = _lstm_gates(rnn["weight_ih_l0"], H)
            bias0 = _lstm_gates(rnn["bias_ih_l0"] + rnn["bias_hh_l0"], H)
            embed = param(model.embed.weight)
            self._input_gates = InputGates(embed, w_ih0, bias0)  # tokens -> (B, 4H)
            self._products = []  # per layer: its input (B, K) -> gates (B, 4H); layer 0's input is h
            for layer in range(config.layers):
                weight = _lstm_gates(rnn[f"weight_hh_l{layer}"], H)  # layer 0: its input part is the table
                bias = torch.zeros_like(bias0)  # layer 0: the table holds it
                if layer:
                    weight = torch.cat([_lstm_gates(rnn[f"weight_ih_l{layer}"], H), weight], dim=1)  # on [x, h]
                    bias = _lstm_gates(rnn[f"bias_ih_l{layer}"] + rnn[f"bias_hh_l{layer}"], H)
                self._products.append(kind.build(weight / self._h_scale, bias, batch))
            self._scores = model.head.step_scorer(device, self._h_scale)  # hs (B, H) -> (B, V)

    def enter(self, state: State) -> list[Tensor]:
        h, c = state  # each (layers, B, H)
        inner = []
        for layer in range(self.layers):
            inner += [h[layer].float() * self._h_scale, c[layer].float() * 2]
        return inner

    def leave(self, inner: list[Tensor]) -> State:
        return torch.stack(inner[0::2]) / self._h_scale, torch.stack(inner[1::2]) / 2

    def step(self, tokens: Tensor, inner: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """tokens (B,) -> next-token scores (B, V) (softmax-ready) and the new state."""
        h_scale = self._h_scale
        new: list[Tensor] = []
        hs = inner[0]
        gates = self._products[0](hs).add_(self._input_gates(tokens))  # (B, 4H)
        for layer, product in enumerate(self._products):
            if layer:  # the layer below's new h is this layer's input
                gates = product(torch.cat([hs, inner[2 * layer]], dim=1))
            i, f, o, g = gates.sigmoid_().chunk(4, dim=1)  # g holds sigmoid(2 g): tanh(g) = 2 g - 1
            cc = (f * inner[2 * layer + 1]).sub_(i, alpha=2).addcmul_(i, g, value=4)  # 2c' = f 2c + 2 i tanh(g)
            hs = torch.addcmul(o * -h_scale, o, cc.sigmoid(), value=2 * h_scale)  # h_scale o tanh(c')
            new += [hs, cc]
        return self._scores(hs), new
