"""The sampling step is chosen by measurement, remembered in a file that may be deleted or corrupt."""

from __future__ import annotations

import json

import pytest
import torch

from chargen.config import ModelConfig
from chargen.generation.inference import make_stepper
from chargen.generation.kernels import CACHE_NAME, cache_key, choose_kernel
from chargen.model import CharLM
from chargen.paths import user_data_dir

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model() -> CharLM:
    torch.manual_seed(0)
    return CharLM(ModelConfig(12, layers=2, hidden=32, embed=16, dropout=0.0)).eval()


def test_the_first_choice_is_measured_and_then_remembered(model: CharLM) -> None:
    first = choose_kernel(model, CPU)
    assert first.how == "measured" and set(first.speeds) == {"int8", "fp32"}
    stored = json.loads((user_data_dir() / CACHE_NAME).read_text(encoding="utf-8"))
    assert stored[cache_key(model)]["precision"] == first.precision
    again = choose_kernel(model, CPU)
    assert (again.how, again.precision) == ("cached", first.precision)


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"k": "v"}'])
def test_a_corrupt_cache_is_ignored_and_rewritten(model: CharLM, content: bytes) -> None:
    path = user_data_dir() / CACHE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    assert choose_kernel(model, CPU).how == "measured"
    assert cache_key(model) in json.loads(path.read_text(encoding="utf-8"))


def test_a_deleted_cache_means_measuring_again(model: CharLM) -> None:
    choose_kernel(model, CPU)
    (user_data_dir() / CACHE_NAME).unlink()
    assert choose_kernel(model, CPU).how == "measured"


def test_a_cached_choice_for_other_shapes_does_not_apply(model: CharLM) -> None:
    choose_kernel(model, CPU)
    wider = CharLM(ModelConfig(12, layers=2, hidden=48, embed=16, dropout=0.0)).eval()
    assert cache_key(wider) != cache_key(model)
    assert choose_kernel(wider, CPU).how == "measured"


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_requested_precision_overrides_the_measurement(model: CharLM, precision: str) -> None:
    choice = choose_kernel(model, CPU, precision)
    assert (choice.precision, choice.how) == (precision, "requested")
    assert not (user_data_dir() / CACHE_NAME).exists()


def test_the_int8_step_gives_the_models_distribution(model: CharLM) -> None:
    """int8 weights move each next-token distribution by little (total variation) from the model's own."""
    tokens = torch.randint(12, (4, 50))
    stepper = make_stepper(model, CPU, "int8")
    with torch.no_grad():
        expected = model(tokens)[0].softmax(dim=-1)  # (4, 50, V)
        inner = stepper.enter(model.initial_state(4))
        for t in range(tokens.shape[1]):
            logits, inner = stepper.step(tokens[:, t], inner)
            distance = (logits.softmax(dim=-1) - expected[:, t]).abs().sum(dim=-1) / 2
            assert float(distance.max()) < 0.02
