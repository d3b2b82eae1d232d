"""The native LSTM step (chargen/generation/_fused.c): the int8 steps' numbers in one call."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import Tensor

from chargen.config import ModelConfig
from chargen.generation import fused
from chargen.generation.inference import Stepper, make_stepper
from chargen.generation.kernels import torch_threads
from chargen.model import CharLM, State
from tests.helpers import needs_precision

CPU = torch.device("cpu")


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())


def lstm(layers: int, hidden: int, vocab: int = 23) -> CharLM:
    torch.manual_seed(hidden * 10 + layers)
    return CharLM(ModelConfig(vocab, layers=layers, hidden=hidden, embed=8, dropout=0.0)).eval()


def step_together(model: CharLM, steppers: list[Stepper], tokens: Tensor) -> tuple[list[list[Tensor]], list[State]]:
    """Each stepper over the same tokens (B, T) from the initial state: its scores at every step,
    and its state at the end."""
    inners = [stepper.enter(model.initial_state(len(tokens))) for stepper in steppers]
    scores: list[list[Tensor]] = [[] for _ in steppers]
    with torch.no_grad():
        for t in range(tokens.shape[1]):
            for i, stepper in enumerate(steppers):
                out, inners[i] = stepper.step(tokens[:, t], inners[i])
                scores[i].append(out.clone())
    return scores, [stepper.leave(inner) for stepper, inner in zip(steppers, inners)]


@pytest.mark.skipif(not os.environ.get("CI"), reason="CI installs with a C compiler; elsewhere it may be absent")
def test_the_native_step_is_built_and_runs_where_the_cpu_has_vnni() -> None:
    """CI must not pass by skipping every test of the native step."""
    flags = cpu_flags()
    if not {"avx512f", "avx512bw", "avx512_vnni"} <= flags:
        pytest.skip("this CPU has no AVX512-VNNI")
    assert fused.available()


@pytest.mark.parametrize(("layers", "hidden"), [(1, 7), (2, 20), (3, 48), (2, 64)])
@pytest.mark.parametrize("streams", [1, 5])
def test_the_native_step_computes_the_int8_steps_numbers(layers: int, hidden: int, streams: int) -> None:
    """Any width (padded to blocks of 16 inside), any depth: the same scores as torch's int8 step,
    whose integer products are exact too, up to float rounding."""
    needs_precision(fused.PRECISION)
    model = lstm(layers, hidden)
    steppers = [make_stepper(model, CPU, fused.PRECISION), make_stepper(model, CPU, "int8", streams)]
    (native, reference), (state, ref_state) = step_together(model, steppers, torch.randint(23, (streams, 40)))
    for scores, expected in zip(native, reference):
        torch.testing.assert_close(scores.softmax(-1), expected.softmax(-1), atol=2e-3, rtol=0)
    torch.testing.assert_close(state, ref_state, atol=1e-2, rtol=0)


def test_entering_and_leaving_keeps_the_state() -> None:
    needs_precision(fused.PRECISION)
    model = lstm(2, 20)
    stepper = make_stepper(model, CPU, fused.PRECISION)
    state = (torch.rand(2, 3, 20) - 0.5, torch.randn(2, 3, 20))
    for got, want in zip(stepper.leave(stepper.enter(state)), state):
        assert torch.equal(got, want)


@pytest.mark.parametrize("streams", [16, 37, 80])
def test_amx_tiles_give_the_same_numbers_as_vnni(streams: int) -> None:
    """Whole groups of 16 streams go through AMX tiles where the CPU has them, the rest through
    VNNI: both sum the same integers exactly, so the scores are identical to the bit."""
    needs_precision(fused.PRECISION)
    if not fused.tiles_available():
        pytest.skip("no AMX tiles here")
    model = lstm(2, 64, vocab=40)
    steppers = [fused.FusedLSTMStepper(model, CPU, tiles=tiles) for tiles in (True, False)]
    (from_tiles, from_vnni), _ = step_together(model, steppers, torch.randint(40, (streams, 12)))
    assert all(torch.equal(a, b) for a, b in zip(from_tiles, from_vnni))


@pytest.mark.parametrize("streams", [1, 20])
def test_the_number_of_threads_does_not_change_the_numbers(streams: int) -> None:
    """Each thread owns whole blocks of units and the sums are exact: a sampler that drops to one
    thread on a busy machine goes on with the same text."""
    needs_precision(fused.PRECISION)
    model = lstm(2, 64)
    stepper = make_stepper(model, CPU, fused.PRECISION)
    tokens = torch.randint(23, (streams, 20))
    runs = []
    for threads in (1, 2):
        with torch_threads(threads):
            runs.append(step_together(model, [stepper], tokens)[0][0])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_tokens_for_another_number_of_streams_are_refused() -> None:
    """The native step writes one state row per token: a mismatch must not write past the state."""
    needs_precision(fused.PRECISION)
    model = lstm(1, 16)
    stepper = make_stepper(model, CPU, fused.PRECISION)
    inner = stepper.enter(model.initial_state(2))
    with pytest.raises(ValueError, match="3 tokens for 2 streams"):
        stepper.step(torch.zeros(3, dtype=torch.long), inner)
