"""Choosing the sampling step costs the user about a second at most, once: a slow candidate is
abandoned after a step or a few, and a choice measured on a busy machine is remembered as
provisional (used without measuring) until the machine is quiet again."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from chargen.config import ModelConfig
from chargen.generation import inference, kernels, products
from chargen.generation.kernels import BUDGET, CACHE_NAME, RETRY, Conditions, cache_key, choose_kernel
from chargen.model import CharLM
from chargen.paths import user_data_dir
from tests.helpers import ScriptedLoad

CPU = torch.device("cpu")
SLEEP = 0.05  # seconds per product of the slow candidate: 0.1 s a step of a 2-layer model


@pytest.fixture(scope="module")
def model() -> CharLM:
    torch.manual_seed(0)
    return CharLM(ModelConfig(12, layers=2, hidden=32, embed=16, dropout=0.0)).eval()


@pytest.fixture
def slow_products(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A real candidate in the registry of products, the fp32 one made to sleep at every call:
    returns the list of its calls' times."""
    calls: list[float] = []

    def build(weight: Tensor, bias: Tensor, batch: int) -> Callable[[Tensor], Tensor]:
        product = products.KINDS["fp32"].build(weight, bias, batch)

        def slow(x: Tensor) -> Tensor:
            calls.append(time.perf_counter())
            time.sleep(SLEEP)
            return product(x)

        return slow

    monkeypatch.setitem(products.KINDS, "slow", products.ProductKind("slow", 1.0, build, lambda: True))
    monkeypatch.setattr(inference, "PRECISIONS", (*inference.PRECISIONS, "slow"))
    return calls


def test_a_slow_candidate_is_abandoned_after_a_step_and_the_choice_stays_within_its_budget(
    model: CharLM, slow_products: list[float]
) -> None:
    """Timed in full, the slow candidate alone would take 2 × (100 + 20) steps of 0.1 s: 24 s."""
    start = time.perf_counter()
    choice = choose_kernel(model, CPU)
    took = time.perf_counter() - start
    assert took < 1.5 * BUDGET, took
    assert all(kernel.precision != "slow" for kernel in choice.kernels.values())
    assert len(slow_products) <= model.config.layers * 2 * len(kernels.BATCHES)  # two steps per stream count
    assert all(speeds["slow/1t"] < 20 for speeds in choice.speeds.values())  # its speed as far as it went


def test_every_candidate_is_measured_even_past_the_budget(model: CharLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget spent before a candidate's turn leaves it a trial of a few steps, not a 0."""
    monkeypatch.setattr(kernels, "BUDGET", 0.0)
    choice = choose_kernel(model, CPU)
    assert all(speed > 0 for speeds in choice.speeds.values() for speed in speeds.values())


class Machine:
    """The conditions a test sets: the wall clock, other processes' CPUs during a measurement,
    and the recent load average."""

    def __init__(self) -> None:
        self.now, self.others, self.load = 1_000_000.0, 0.0, 0.0

    def conditions(self) -> Conditions:
        return Conditions(wall=lambda: self.now, load=ScriptedLoad(busy=self.others), recent_load=lambda: self.load)


def test_a_choice_measured_on_a_busy_machine_is_used_until_a_quiet_moment_measures_it_again(
    model: CharLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernels, "_JUDGED", 0.0)  # judge the tiny model's brief measurement too
    machine = Machine()
    machine.others, machine.load = 1.6, 2.5
    busy = choose_kernel(model, CPU, conditions=machine.conditions())
    assert busy.how == "measured while other processes kept 1.6 CPUs busy: provisional"
    stored = json.loads((user_data_dir() / CACHE_NAME).read_text(encoding="utf-8"))[cache_key(model)]
    assert stored["provisional_since"] == machine.now

    machine.now += RETRY + 1  # old enough, but the machine is still busy: no measuring
    again = choose_kernel(model, CPU, conditions=machine.conditions())
    assert again.how.startswith("cached, provisional") and again.speeds == busy.speeds

    machine.load, machine.now = 0.2, machine.now - 2  # quiet, but measured too recently
    assert choose_kernel(model, CPU, conditions=machine.conditions()).how.startswith("cached, provisional")

    machine.now += 2
    machine.others = 0.0
    quiet = choose_kernel(model, CPU, conditions=machine.conditions())
    assert quiet.how == "measured"
    assert (
        "provisional_since"
        not in json.loads((user_data_dir() / CACHE_NAME).read_text(encoding="utf-8"))[cache_key(model)]
    )
    machine.load = 3.0
    assert choose_kernel(model, CPU, conditions=machine.conditions()).how == "cached"
