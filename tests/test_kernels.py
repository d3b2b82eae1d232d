"""The sampling step is chosen by measurement, remembered in a file that may be deleted or corrupt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from chargen.config import ModelConfig
from chargen.generation import products
from chargen.generation.inference import make_stepper, step_precisions
from chargen.generation.kernels import (
    BATCHES,
    CACHE_NAME,
    Conditions,
    Kernel,
    KernelChoice,
    cache_key,
    choose_kernel,
    cpu_model,
)
from chargen.model import CharLM
from chargen.paths import user_data_dir
from tests.helpers import ScriptedLoad, precisions_here

CPU = torch.device("cpu")
FP32 = {"precision": "fp32", "threads": 1}


@pytest.fixture(scope="module")
def model() -> CharLM:
    torch.manual_seed(0)
    return CharLM(ModelConfig(12, layers=2, hidden=32, embed=16, dropout=0.0)).eval()


def quiet() -> Conditions:
    """No other process busy, whatever runs beside the test."""
    return Conditions(load=ScriptedLoad(busy=0.0))


def test_the_first_choice_is_measured_and_then_remembered(model: CharLM) -> None:
    first = choose_kernel(model, CPU, conditions=quiet())
    assert first.how == "measured" and set(first.speeds) == set(BATCHES)
    labels = {Kernel(p, t).label for p in step_precisions(model, CPU) for t in {1, torch.get_num_threads()}}
    assert all(set(speeds) == labels for speeds in first.speeds.values())
    for batch, speeds in first.speeds.items():
        assert first.kernels[batch].label == max(speeds, key=speeds.__getitem__)
    stored = json.loads((user_data_dir() / CACHE_NAME).read_text(encoding="utf-8"))
    assert stored[cache_key(model)]["kernels"]["1"]["precision"] == first.kernels[1].precision
    again = choose_kernel(model, CPU, conditions=quiet())
    assert (again.how, again.kernels, again.speeds) == ("cached", first.kernels, first.speeds)


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"k": "v"}'])
def test_a_corrupt_cache_is_ignored_and_rewritten(model: CharLM, content: bytes) -> None:
    path = user_data_dir() / CACHE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    assert choose_kernel(model, CPU, conditions=quiet()).how == "measured"
    assert cache_key(model) in json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "entry",
    [
        {"precision": "int8", "speeds": {"int8": 1.0}},  # the format before choices per stream count
        {"kernels": {"1": FP32}, "speeds": {"1": {}}},  # a stream count missing
        {"kernels": {"1": {"precision": "int4", "threads": 1}, "64": FP32}, "speeds": {"1": {}, "64": {}}},
        {"kernels": {"1": {"precision": "fp32", "threads": 99}, "64": FP32}, "speeds": {"1": {}, "64": {}}},
        {"kernels": {"1": FP32, "64": FP32}, "speeds": {"1": {"fp32/1t": "fast"}, "64": {}}},
        {"kernels": {"1": FP32, "64": FP32}, "speeds": {"1": {"fp32/1t": 1.0}, "64": {"fp32/1t": 1.0}}},
    ],
    ids=["old format", "incomplete", "unknown precision", "too many threads", "bad speed", "a candidate unmeasured"],
)
def test_a_cached_entry_that_does_not_fit_is_measured_again(model: CharLM, entry: object) -> None:
    path = user_data_dir() / CACHE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({cache_key(model): entry}), encoding="utf-8")
    assert choose_kernel(model, CPU, conditions=quiet()).how == "measured"


def test_a_deleted_cache_means_measuring_again(model: CharLM) -> None:
    choose_kernel(model, CPU, conditions=quiet())
    (user_data_dir() / CACHE_NAME).unlink()
    assert choose_kernel(model, CPU, conditions=quiet()).how == "measured"


def test_a_cached_choice_for_other_shapes_does_not_apply(model: CharLM) -> None:
    choose_kernel(model, CPU, conditions=quiet())
    wider = CharLM(ModelConfig(12, layers=2, hidden=48, embed=16, dropout=0.0)).eval()
    assert cache_key(wider) != cache_key(model)
    assert choose_kernel(wider, CPU, conditions=quiet()).how == "measured"


def test_a_measurement_too_brief_to_judge_the_load_is_remembered(model: CharLM) -> None:
    """/proc/stat counts in 10 ms ticks: over a very short measurement a busy-looking figure is noise."""
    assert choose_kernel(model, CPU, conditions=Conditions(load=ScriptedLoad(busy=2.0, tick=0.01))).how == "measured"


@pytest.mark.parametrize("precision", precisions_here())
def test_a_requested_precision_overrides_the_measurement(model: CharLM, precision: str) -> None:
    choice = choose_kernel(model, CPU, precision)
    assert choice.how == "requested"
    assert choice.for_batch(1) == choice.for_batch(64) == Kernel(precision, torch.get_num_threads())
    assert not (user_data_dir() / CACHE_NAME).exists()


def test_a_batch_runs_with_the_choice_measured_for_the_nearest_stream_count() -> None:
    one, many = Kernel("int8-fbgemm", 1), Kernel("int8", 2)
    choice = KernelChoice({1: one, 64: many}, "measured")
    assert [choice.for_batch(n) for n in (1, 2, 7, 9, 64, 256)] == [one] * 3 + [many] * 3


def test_fp32_steps_give_the_models_tokens(model: CharLM) -> None:
    tokens = torch.randint(12, (4, 50))
    stepper = make_stepper(model, CPU, "fp32")
    with torch.no_grad():
        expected = model(tokens)[0]  # (4, 50, V)
        inner = stepper.enter(model.initial_state(4))
        for t in range(tokens.shape[1]):
            logits, inner = stepper.step(tokens[:, t], inner)
            torch.testing.assert_close(logits, expected[:, t], atol=1e-4, rtol=1e-4)
            assert torch.equal(logits.argmax(-1), expected[:, t].argmax(-1))


@pytest.mark.parametrize("precision", precisions_here(reduced=True))
@pytest.mark.parametrize("streams", [1, 4])
def test_reduced_precision_steps_give_the_models_distribution(model: CharLM, precision: str, streams: int) -> None:
    """int8 or bf16 weights move each next-token distribution by little (total variation) from the
    model's own, for one stream and for a batch."""
    tokens = torch.randint(12, (streams, 50))
    stepper = make_stepper(model, CPU, precision, streams)
    with torch.no_grad():
        expected = model(tokens)[0].softmax(dim=-1)  # (streams, 50, V)
        inner = stepper.enter(model.initial_state(streams))
        for t in range(tokens.shape[1]):
            logits, inner = stepper.step(tokens[:, t], inner)
            distance = (logits.softmax(dim=-1) - expected[:, t]).abs().sum(dim=-1) / 2
            assert float(distance.max()) < 0.02


@pytest.mark.parametrize("precision", precisions_here(reduced=True))
def test_a_stream_gets_the_same_distribution_alone_or_in_a_batch(model: CharLM, precision: str) -> None:
    """The int8 input scale is fixed, not taken from the batch: a stream's numbers do not depend
    on the other streams."""
    tokens = torch.randint(12, (5, 30))
    alone, batch = make_stepper(model, CPU, precision, 1), make_stepper(model, CPU, precision, 5)
    with torch.no_grad():
        inner_alone = alone.enter(model.initial_state(1))
        inner_batch = batch.enter(model.initial_state(5))
        for t in range(tokens.shape[1]):
            one, inner_alone = alone.step(tokens[:1, t], inner_alone)
            many, inner_batch = batch.step(tokens[:, t], inner_batch)
            torch.testing.assert_close(one[0], many[0], atol=1e-5, rtol=1e-5)


def test_the_description_names_each_candidate_without_markup_brackets(model: CharLM) -> None:
    """rich (chargen info, the REPL) would swallow [..] as markup."""
    choice = choose_kernel(model, CPU, conditions=quiet())
    text = choice.describe()
    assert all(label in text for speeds in choice.speeds.values() for label in speeds)
    assert "[" not in text and "measured" in text


def test_the_cpu_is_named_with_its_family_and_model_numbers(tmp_path: Path) -> None:
    """Two AMD EPYC generations both call themselves "AMD EPYC" in a virtual machine."""
    cpuinfo = tmp_path / "cpuinfo"
    block = "processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n"
    cpuinfo.write_text(block.format(n=0) + "\n" + block.format(n=1), encoding="utf-8")
    assert cpu_model(cpuinfo) == "AMD EPYC (family 26, model 2)"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\n", encoding="utf-8")
    assert cpu_model(cpuinfo) == "Some CPU"


@pytest.mark.parametrize("limit", [1 << 26, 0], ids=["looked up", "computed"])
def test_the_first_layers_input_gates_are_embedding_times_weights_plus_bias(
    monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    """Small vocabularies look the gates up in a table; huge ones (past the table's size limit)
    compute them at each step: the same numbers either way."""
    monkeypatch.setattr(products, "_TABLE_LIMIT", limit)
    embed, weight, bias = torch.randn(30, 8), torch.randn(12, 8), torch.randn(12)
    tokens = torch.tensor([0, 29, 7, 7])
    expected = embed[tokens] @ weight.t() + bias
    torch.testing.assert_close(products.InputGates(embed, weight, bias)(tokens), expected)
