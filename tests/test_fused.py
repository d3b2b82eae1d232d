"""The native LSTM step (chargen/generation/_fused.c): the int8 steps' numbers in one call, on
every path (instruction set) the CPU runs."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import pytest
import torch
from torch import Tensor

from chargen.config import ModelConfig, SampleConfig
from chargen.data.tokenizers import CharTokenizer
from chargen.generation import fused
from chargen.generation.inference import Stepper, make_stepper
from chargen.generation.kernels import torch_threads
from chargen.generation.products import quantize_rows
from chargen.generation.sampler import Sampler
from chargen.model import CharLM, State
from tests.helpers import chargen_command, exact_int8_step, needs_precision

CPU = torch.device("cpu")
ISAS = ("portable", "avx2", "avxvnni", "avx512", "amx")  # the C step's paths, slowest first


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


def needs_isa(isa: str) -> None:
    """Skip only where the CPU lacks the path's instructions (or the step was not built: CI
    fails then, by the test below)."""
    if isa not in fused.runnable_isas():
        pytest.skip(f"the native step's {isa} path does not run on this CPU")


@pytest.mark.skipif(not os.environ.get("CI"), reason="CI installs with a C compiler; elsewhere it may be absent")
def test_the_native_step_is_built_with_every_path_the_cpu_runs() -> None:
    """CI must not pass by skipping every test of the native step: on the architectures it is
    written for it must be built, with the paths the CPU's flags promise."""
    if platform.machine().lower() not in {"x86_64", "amd64", "aarch64", "arm64"}:
        pytest.skip(f"the native step is not written for {platform.machine()}")
    runs, flags = fused.runnable_isas(), cpu_flags()
    assert "portable" in runs
    assert ({"avx2", "fma"} <= flags) == ("avx2" in runs)
    assert ({"avx512f", "avx512bw", "avx512_vnni"} <= flags) == ("avx512" in runs)


def test_the_paths_run_fastest_first_and_the_portable_one_everywhere() -> None:
    needs_precision(fused.PRECISION)
    runs = fused.runnable_isas()
    assert runs[-1] == "portable" and runs == sorted(runs, key=ISAS.index, reverse=True)
    assert fused.isa_in_use() == runs[0] or os.environ.get(fused.ISA_VARIABLE)


@pytest.mark.parametrize(("layers", "hidden"), [(1, 7), (2, 20), (3, 48), (2, 64)])
@pytest.mark.parametrize("streams", [1, 5])
def test_the_native_step_computes_the_int8_steps_numbers(
    monkeypatch: pytest.MonkeyPatch, layers: int, hidden: int, streams: int
) -> None:
    """Any width (padded to blocks of 16 inside), any depth: the same scores as torch's int8 step,
    whose integer products are exact too, up to float rounding."""
    needs_precision(fused.PRECISION)
    exact_int8_step(monkeypatch)
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


@pytest.mark.parametrize("isa", ISAS)
def test_each_path_gives_the_portable_paths_numbers_to_the_bit(isa: str) -> None:
    """The same integer sums (AMX tiles for whole groups of 16 streams, four streams per load of
    weights, one at a time) and the same float operations in the same order: identical scores and
    state on every path, for any number of streams and threads."""
    needs_isa(isa)
    model = lstm(2, 64, vocab=40)
    for streams in (1, 4, 37, 64):
        tokens = torch.randint(40, (streams, 8))
        for threads in (1, 2):
            with torch_threads(threads):
                steppers = [fused.FusedLSTMStepper(model, CPU, isa=name) for name in (isa, "portable")]
                (got, expected), (state, expected_state) = step_together(model, steppers, tokens)
            assert all(torch.equal(a, b) for a, b in zip(got, expected)), (streams, threads)
            assert all(torch.equal(a, b) for a, b in zip(state, expected_state)), (streams, threads)


def test_the_avx2_paths_int16_weights_are_the_int8_rows_made_at_the_first_step_of_four_streams() -> None:
    """Groups of four streams on the avx2 path read the weights widened to int16 pairs of inputs
    (4, H/16, K/2, 16, 2): the same integers as the int8 rows, made only when four or more
    streams step (a one-stream run does not pay for the second copy)."""
    needs_isa("avx2")
    weight = torch.randn(4 * 32, 64)
    wide = fused._widen(fused._pack(weight, 32)[0])
    rows = quantize_rows(weight)[0].view(4, 2, 16, 32, 2).permute(0, 1, 3, 2, 4)  # gate, block, pair, unit, input
    assert wide.dtype == torch.int16 and torch.equal(wide, rows.to(torch.int16))
    model = lstm(2, 32)
    stepper = fused.FusedLSTMStepper(model, CPU, isa="avx2")
    widened = stepper._plan[4::5]  # each layer's address of its int16 weights (0: none)
    for streams, made in ((1, False), (3, False), (4, True)):
        inner = stepper.enter(model.initial_state(streams))
        stepper.step(torch.zeros(streams, dtype=torch.long), inner)
        assert bool(widened.all()) == made and bool(widened.any()) == made, streams


@pytest.mark.parametrize("isa", ISAS)
def test_each_path_samples_the_int8_steps_tokens_for_a_seed(monkeypatch: pytest.MonkeyPatch, isa: str) -> None:
    """Forced by CHARGEN_NATIVE_ISA, each path writes the text torch's int8 step writes for the
    same seed: on 1, 4 and 64 streams, on 1 and 2 threads."""
    needs_isa(isa)
    exact_int8_step(monkeypatch)
    monkeypatch.setenv(fused.ISA_VARIABLE, isa)
    tokenizer = CharTokenizer.train("the quick brown fox jumps over the lazy dog.\n")
    torch.manual_seed(3)
    model = CharLM(ModelConfig(tokenizer.vocab_size, layers=2, hidden=48, embed=8, dropout=0.0)).eval()
    config = SampleConfig(length=40, temperature=1.0, seed=11)
    for streams in (1, 4, 64):
        primes = ["the "] * streams
        for threads in (1, 2):
            with torch_threads(threads):
                texts = {
                    p: Sampler(model, tokenizer, precision=p, share_cores=False).generate(primes, config)
                    for p in (fused.PRECISION, "int8")
                }
            assert texts[fused.PRECISION] == texts["int8"], (streams, threads)


def test_a_forced_path_is_named_and_a_path_the_cpu_lacks_is_refused(tiny_checkpoint: Path) -> None:
    """`chargen sample -v` and `chargen info` say which native path runs; forcing one this CPU
    cannot run is one Error line, not a crash."""
    needs_precision(fused.PRECISION)
    command = [*chargen_command(), "sample", str(tiny_checkpoint), "--length", "200", "--seed", "5"]
    command += ["--precision", fused.PRECISION, "-v"]
    forced = subprocess.run(command, capture_output=True, text=True, env={**os.environ, fused.ISA_VARIABLE: "portable"})
    assert forced.returncode == 0, forced.stderr
    assert f"native step portable, forced by {fused.ISA_VARIABLE}" in forced.stderr and len(forced.stdout) >= 200
    info = subprocess.run([*chargen_command(), "info", str(tiny_checkpoint)], capture_output=True, text=True)
    assert info.returncode == 0 and "native step" in info.stdout and fused.runnable_isas()[0] in info.stdout
    lacking = next((isa for isa in ISAS if isa not in fused.runnable_isas()), "sparc")
    refused = subprocess.run(command, capture_output=True, text=True, env={**os.environ, fused.ISA_VARIABLE: lacking})
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith(f"Error: the native step's {lacking} path")


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
