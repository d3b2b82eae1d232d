"""The LSTM sampling step as one native call (chargen/generation/_fused.c), wherever it was built.

A step of the torch steppers (chargen.generation.inference) is ~40 small operations, and for one
stream their overhead and the re-reading of the weights from L3 cost more than the arithmetic:
on an Intel Xeon with AMX the best of them managed 6.5k steps/s. The native step runs every
layer's product, gates and cell update in one pass per thread, each thread on the same hidden
units at every step so that its part of the weights stays in its core's L2. Its numbers are the
int8 steps' numbers (h as round(127 h), weights per output row, exact integer sums).

One build holds a path per instruction set (AMX, AVX512-VNNI, AVX-VNNI, AVX2, plain C); the
fastest the CPU runs is used, or the one CHARGEN_NATIVE_ISA names (tests and benchmarks force
each path with it). All paths give the same numbers to the bit.
"""

from __future__ import annotations

import importlib
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from chargen.errors import ConfigError
from chargen.generation.products import INT8_H_SCALE, InputGates, quantize_rows
from chargen.model import CharLM, State

PRECISION = "int8-fused"
ISA_VARIABLE = "CHARGEN_NATIVE_ISA"
_BLOCK = 16  # hidden units per native block
_GROUP = 4  # streams per load of weights in the native step (MAX_STREAMS)
_LAYER_FIELDS = 5  # addresses per layer in the plan: weight, offset, scale, bias, wide (0: none)


def _native() -> object | None:
    try:
        return importlib.import_module("chargen.generation._fused")
    except ImportError:  # built without the C step (no compiler at install time)
        return None


_FUSED = _native()


def runnable_isas() -> list[str]:
    """The native step's paths this CPU runs, fastest first; empty where it was not built."""
    return list(_FUSED.runnable()) if _FUSED is not None else []  # type: ignore[attr-defined]


def available() -> bool:
    """Built (the plain C path runs on every CPU)."""
    return bool(runnable_isas())


def tiles_available() -> bool:
    """The native step can also use AMX tiles (for whole groups of 16 streams) here."""
    return "amx" in runnable_isas()


def isa_in_use() -> str | None:
    """The path a new native step takes: the one CHARGEN_NATIVE_ISA names, else the fastest here."""
    return os.environ.get(ISA_VARIABLE) or next(iter(runnable_isas()), None)


def describe() -> str:
    """One line for `chargen info` and `chargen sample -v`: which native path runs and which could."""
    runs = runnable_isas()
    if not runs:
        return "not built (torch's kernels serve)"
    forced = f", forced by {ISA_VARIABLE}" if os.environ.get(ISA_VARIABLE) else ""
    return f"{isa_in_use()}{forced} (runs here: {', '.join(runs)})"


def _isa_code(isa: str | None) -> int:
    """The C step's number for the path `isa` (default: isa_in_use()), checked to run here."""
    isa = isa or isa_in_use()
    runs = runnable_isas()
    if isa not in runs:
        raise ConfigError(
            f"the native step's {isa} path ({ISA_VARIABLE}) does not run on this CPU; use one of {', '.join(runs)}"
        )
    return list(_FUSED.ISAS).index(isa)  # type: ignore[union-attr]


def _pad_gates(tensor: Tensor, hidden: int, padded: int) -> Tensor:
    """Gate rows (4H, ...) -> (4P, ...), each gate's units padded with zeros to P. A padded unit's
    gates are 0, so its c and h stay 0 and it changes nothing: any width runs in blocks of 16."""
    rows = tensor.view(4, hidden, -1)
    return F.pad(rows, (0, 0, 0, padded - hidden)).reshape(4 * padded, *tensor.shape[1:])


def _pad_inputs(weight: Tensor, hidden: int, padded: int) -> Tensor:
    """Columns of n hidden vectors (R, nH) -> (R, nP), zeros for the padded units."""
    columns = weight.view(len(weight), -1, hidden)
    return F.pad(columns, (0, padded - hidden)).reshape(len(weight), -1)


def _pack(weight: Tensor, hidden: int) -> tuple[Tensor, Tensor, Tensor]:
    """(4H, K) fp32 -> the native layout (4, H/16, K/4, 16, 4) of its int8 rows, 128 times each
    row's integer sum (the unsigned-input correction), and the row scales."""
    q, scale = quantize_rows(weight)
    offset = q.sum(dim=1, dtype=torch.int32) * 128
    k = weight.shape[1]
    packed = q.view(4, hidden // _BLOCK, _BLOCK, k // 4, 4).permute(0, 1, 3, 2, 4).contiguous()
    return packed, offset.contiguous(), scale.float().contiguous()


def _widen(packed: Tensor) -> Tensor:
    """The native layout (4, H/16, K/4, 16, 4) int8 -> (4, H/16, K/2, 16, 2) int16: pairs of inputs
    for the avx2 path's vpmaddwd (groups of four streams)."""
    gates, blocks, groups = packed.shape[:3]
    pairs = packed.view(gates, blocks, groups, _BLOCK, 2, 2).permute(0, 1, 2, 4, 3, 5)
    return pairs.reshape(gates, blocks, 2 * groups, _BLOCK, 2).to(torch.int16).contiguous()


class FusedLSTMStepper:
    """Inner state: hc (B, L, 2, P) fp32 (h and c, updated in place) and the levels
    round(127 h) + 128 (B, L, P) uint8 before and after the step, swapped at every step; P is
    the width padded to whole blocks."""

    precision = PRECISION

    def __init__(self, model: CharLM, device: torch.device, isa: str | None = None) -> None:
        config = model.config
        self._isa = _isa_code(isa)  # the instruction set of the native path
        self._widens = list(_FUSED.ISAS)[self._isa] == "avx2"  # type: ignore[union-attr]
        H = self.hidden = config.hidden
        P = self._padded = -(-H // _BLOCK) * _BLOCK
        self.layers = config.layers
        rnn = {name: p.detach().float().cpu() for name, p in model.rnn.named_parameters()}
        with torch.no_grad():
            embed = model.embed.weight.detach().float().cpu()
            bias0 = _pad_gates(rnn["bias_ih_l0"] + rnn["bias_hh_l0"], H, P)
            self._input_gates = InputGates(embed, _pad_gates(rnn["weight_ih_l0"], H, P), bias0)  # tokens -> (B, 4P)
            self._keep: list[Tensor] = []  # the buffers whose addresses the native step holds
            self._packed: list[Tensor] = []
            addresses = []
            for layer in range(self.layers):
                weight = rnn[f"weight_hh_l{layer}"] / INT8_H_SCALE
                bias = torch.zeros(4 * H)
                if layer:
                    weight = torch.cat([rnn[f"weight_ih_l{layer}"] / INT8_H_SCALE, weight], dim=1)
                    bias = rnn[f"bias_ih_l{layer}"] + rnn[f"bias_hh_l{layer}"]
                weight, bias = _pad_gates(_pad_inputs(weight, H, P), H, P), _pad_gates(bias, H, P)
                buffers = [*_pack(weight, P), bias.contiguous()]
                self._keep += buffers
                self._packed.append(buffers[0])
                addresses += [b.data_ptr() for b in buffers] + [0]
            self._plan = torch.tensor(addresses, dtype=torch.int64)
        self._scores = model.head.step_scorer(device, 1.0)  # h (B, H) -> (B, V)

    def _widen_weights(self) -> None:
        """Give the avx2 path its int16 weights (twice the int8 bytes), at the first step of four
        or more streams: only a many-stream run pays for the second copy."""
        self._widens = False
        for layer, packed in enumerate(self._packed):
            wide = _widen(packed)
            self._keep.append(wide)
            self._plan[_LAYER_FIELDS * layer + 4] = wide.data_ptr()

    def enter(self, state: State) -> list[Tensor]:
        pad = self._padded - self.hidden
        h, c = (F.pad(s.float().cpu().transpose(0, 1), (0, pad)) for s in state)  # each (B, L, P)
        levels = (h * INT8_H_SCALE).round_().add_(128).to(torch.uint8)
        return [torch.stack([h, c], dim=2).contiguous(), levels.contiguous(), torch.empty_like(levels)]

    def leave(self, inner: list[Tensor]) -> State:
        hc = inner[0].transpose(0, 1)[..., : self.hidden]  # (L, B, 2, H)
        return hc[:, :, 0].contiguous(), hc[:, :, 1].contiguous()

    def step(self, tokens: Tensor, inner: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """tokens (B,) -> next-token scores (B, V) and the new state (hc updated in place)."""
        hc, before, after = inner
        if len(tokens) != len(hc):  # the native step writes len(tokens) rows of the state
            raise ValueError(f"{len(tokens)} tokens for {len(hc)} streams")
        if self._widens and len(tokens) >= _GROUP:
            self._widen_weights()
        pre0 = self._input_gates(tokens)
        _FUSED.step(  # type: ignore[union-attr]
            self._plan.data_ptr(),
            self.layers,
            self._padded,
            len(tokens),
            torch.get_num_threads(),
            self._isa,
            pre0.data_ptr(),
            hc.data_ptr(),
            before.data_ptr(),
            after.data_ptr(),
        )
        return self._scores(hc[:, -1, 0, : self.hidden]), [hc, after, before]
