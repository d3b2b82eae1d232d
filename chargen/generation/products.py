"""The matrix product at the heart of a sampling step, in every form that can be the fastest.

A step of a 2×512 LSTM reads its weights once per step (3 MB in int8, 12.5 MB in fp32) for a
handful of streams, so which library multiplies, in which precision and from which weight layout
decides the speed, and the answer differs between CPUs: torch's `_int_mm` wins on an AMD EPYC
without AMX, fbgemm's prepacked int8 product is three times faster for one stream on an Intel
Xeon with AMX, and bf16 can win where neither int8 path exists. So each form is a `ProductKind`
and chargen.generation.kernels measures them, and the native whole step
(chargen.generation.fused), on the machine at hand.

Every product computes x @ W.T + b in fp32, where x is the state's h stored as `h_scale * h` (and
W was divided by h_scale). The int8 forms keep h as 127 h, round it to integers (the fixed scale
1/127: h of an LSTM lies in (-1, 1)) and quantise W with one scale
per output row: the integer product is exact, and a stream's result does not depend on what
else is in the batch (a dynamic per-batch activation scale would make it so).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

Product = Callable[[Tensor], Tensor]  # x (B, K) -> x @ W.T + b (B, N), fp32
IntMatmul = Callable[[Tensor, Tensor], Tensor]  # int8 (B, K) @ int8 (K, N) -> int32 (B, N)
INT8_H_SCALE = 127.0  # int8 h = round(127 h)
_TABLE_LIMIT = 1 << 26  # floats; above this (huge vocabularies) the input gates are computed, not looked up


class InputGates:
    """The first layer's input gates for a batch of tokens, (B,) -> (B, N) fp32: embedding times
    input weights plus bias, precomputed for every token (V, N) so that a step looks up a row."""

    def __init__(self, embed: Tensor, weight: Tensor, bias: Tensor) -> None:  # (V, E), (N, E), (N,)
        self._embed, self._weight_t, self._bias = embed, weight.t().contiguous(), bias
        fits = embed.shape[0] * len(bias) <= _TABLE_LIMIT
        self._table = torch.addmm(bias, embed, self._weight_t) if fits else None  # (V, N)

    def __call__(self, tokens: Tensor) -> Tensor:
        if self._table is not None:
            return F.embedding(tokens, self._table)
        return torch.addmm(self._bias, F.embedding(tokens, self._embed), self._weight_t)


@dataclass(frozen=True)
class ProductKind:
    name: str
    h_scale: float  # the stepper keeps h multiplied by this
    build: Callable[[Tensor, Tensor, int], Product]  # (W (N, K) fp32, b (N,), batch hint) -> product
    usable: Callable[[], bool]  # on this CPU and torch build (checked once, on the CPU)


def quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per output row -> (int8 weight (N, K), scale (N,)) with weight ~ q * scale."""
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    return (weight / scale[:, None]).round().clamp(-127, 127).to(torch.int8), scale


def _fp32(weight: Tensor, bias: Tensor, batch: int) -> Product:
    weight_t = weight.t().contiguous()  # (K, N): addmm's fastest layout for a few rows
    return lambda x: torch.addmm(bias, x, weight_t)


def int8_product(matmul: IntMatmul) -> Callable[[Tensor, Tensor, int], Product]:
    """The int8 step's product on the raw weight (no prepacking): int32 sums from `matmul`, then
    row scales. chargen's `matmul` is torch's `_int_mm`, offered only where it is exact; tests
    sum the same integers another way where it is not (oneDNN without VNNI saturates)."""

    def build(weight: Tensor, bias: Tensor, batch: int) -> Product:
        q, scale = quantize_rows(weight)
        q_t = q.t()  # _int_mm is fastest on this transposed view
        return lambda x: torch.addcmul(bias, matmul(x.round().to(torch.int8), q_t), scale)

    return build


_int_mm = int8_product(lambda x, w: torch._int_mm(x, w))


def _fbgemm(weight: Tensor, bias: Tensor, batch: int) -> Product:
    """fbgemm's prepacked int8 linear with a static input scale and fp32 output, bias included:
    one call, weights in the cache-blocked layout fbgemm streams fastest."""
    q, scale = quantize_rows(weight)
    zeros = torch.zeros(len(scale), dtype=torch.long)
    with warnings.catch_warnings():  # quantized tensors are deprecated: `usable` notices their removal
        warnings.simplefilter("ignore", UserWarning)
        qweight = torch._make_per_channel_quantized_tensor(q.cpu(), scale.double().cpu(), zeros, 0)
    engine = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    try:
        packed = torch.ops.quantized.linear_prepack(qweight, bias.cpu())
    finally:
        torch.backends.quantized.engine = engine
    linear = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32.default  # the packet costs ~5 µs a call
    return lambda x: linear(x, 1.0, 128, packed)  # x is 127 h: unit scale, uint8 zero point 128


def _bf16(weight: Tensor, bias: Tensor, batch: int) -> Product:
    """oneDNN's bf16 linear on weights reordered once for the expected batch (AMX tiles where the
    CPU has them); the bias is added in fp32."""
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.bfloat16(), batch)
    linear = torch.ops.mkldnn._linear_pointwise.default
    return lambda x: torch.add(bias, linear(x.to(torch.bfloat16), packed, None, "none", [], ""))


@cache
def _computes_exactly(build: Callable[[Tensor, Tensor, int], Product]) -> bool:
    """An int8 kind is used only where it gives the exact integer product: some CPUs' int8
    instructions saturate 16-bit sums (fbgemm without VNNI), so this is checked on a worst case
    of full-scale weights and inputs rather than assumed."""
    try:
        weight = torch.full((64, 256), -0.5 / INT8_H_SCALE)
        weight[::2] = 0.5 / INT8_H_SCALE
        bias = torch.linspace(-1, 1, 64)
        x = torch.full((2, 256), INT8_H_SCALE)
        x[1, ::2] = -INT8_H_SCALE
        expected = x.double() @ weight.double().t() + bias.double()
        got = build(weight, bias, 2)(x).double()
        return bool(torch.allclose(got, expected, rtol=1e-5, atol=1e-3))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def _engine(name: str) -> bool:
    return name in torch.backends.quantized.supported_engines


KINDS: dict[str, ProductKind] = {
    kind.name: kind
    for kind in (
        ProductKind("fp32", 1.0, _fp32, lambda: True),
        ProductKind("int8", INT8_H_SCALE, _int_mm, lambda: hasattr(torch, "_int_mm") and _computes_exactly(_int_mm)),
        ProductKind("int8-fbgemm", INT8_H_SCALE, _fbgemm, lambda: _engine("fbgemm") and _computes_exactly(_fbgemm)),
        ProductKind(
            "bf16",
            1.0,
            _bf16,
            lambda: torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported(),
        ),
    )
}
