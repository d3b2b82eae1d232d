"""The shape chosen for a time budget: the rule against its measured table, which options leave
the choice to chargen, and a real run that chooses, stores its shape and resumes without choosing.
Throughputs are given, not timed, so the outcome never depends on this machine's load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from chargen.checkpoint import load_checkpoint
from chargen.config import ModelConfig, TrainConfig
from chargen.training.distributed import World
from chargen.training.run import TrainRequest, prepare
from chargen.training.shape import (
    CURVE_TOKENS,
    CURVES,
    DEFAULT,
    MARGIN,
    TRAINING_SHARE,
    Curve,
    Shape,
    choose,
    predicted_bpc,
)
from chargen.training.shape_rates import candidates, measure
from tests.helpers import Recorder

CPU = torch.device("cpu")
SHAPES = {str(c.shape).replace(" batch 64×64", ""): c.shape for c in CURVES}  # "1×512 no dropout" -> Shape
NETWORKS = {name: shape for name, shape in SHAPES.items() if shape == shape.timed}  # "2×512" -> Shape
SMALLEST = min(NETWORKS.values(), key=lambda s: s.layers * s.hidden)


def test_the_table_starts_with_the_default_shape_and_its_curves_fall() -> None:
    assert (DEFAULT.layers, DEFAULT.hidden) == (ModelConfig(vocab_size=2).layers, ModelConfig(vocab_size=2).hidden)
    assert (DEFAULT.batch_size, DEFAULT.seq_len) == (TrainConfig().batch_size, TrainConfig().seq_len)
    for curve in CURVES:
        steps = [n for n, _ in curve.points]
        bpc = [b for _, b in curve.points]
        assert len(steps) >= 2 and steps == sorted(steps) and bpc == sorted(bpc, reverse=True), curve


def test_predictions_follow_the_table_between_points_and_stay_flat_beyond_it() -> None:
    curve = Curve(Shape(1, 8), ((100, 3.0), (400, 2.0)))
    assert predicted_bpc(curve, 100) == pytest.approx(3.0)
    assert predicted_bpc(curve, 200) == pytest.approx(2.5)  # halfway in log(steps)
    assert predicted_bpc(curve, 50) == pytest.approx(3.5)  # the first segment's slope below the table
    assert predicted_bpc(curve, 10_000) == pytest.approx(2.0)


def test_equal_speeds_keep_the_default_and_the_time_left_decides() -> None:
    """With the same steps/s for every network of the default's regularisation, nothing but the
    default can win (more parameters learn more per step); a shape many times faster wins a short budget."""
    small = SMALLEST
    same = choose({shape: 1.0 for shape in NETWORKS.values()}, 600)
    assert same.shape == DEFAULT and same.predictions[0].shape == DEFAULT
    fast = choose({DEFAULT: 0.5, small: 10.0}, 60)
    assert fast.shape == small
    assert fast.predictions[0].steps == pytest.approx(10.0 * 60 * 0.93)


# Steps/s of each candidate as `chargen train` measured them (2 threads, `python benchmarks/shapes.py
# --rates`; docs/PERFORMANCE.md, "Shapes for a time budget").
ZEN4 = {"2×512": 2.67, "1×512": 6.15, "1×256": 15.52}  # AMD EPYC family 25 model 17, bf16
AVX2 = {"2×512": 1.56, "1×512": 3.65, "1×256": 7.72}  # the same, emulated AVX2, fp32


@pytest.mark.parametrize(
    ("rates", "minutes", "expected"),
    [
        (ZEN4, 1, "1×256 no dropout"),
        (ZEN4, 3, "1×512 no dropout"),
        (ZEN4, 10, "1×512"),
        (ZEN4, 30, "2×512"),
        (AVX2, 1, "1×256 no dropout"),
        (AVX2, 3, "1×512 no dropout"),
        (AVX2, 10, "1×512 no dropout"),
        (AVX2, 30, "1×512"),
    ],
    ids=["zen4 1m", "zen4 3m", "zen4 10m", "zen4 30m", "avx2 1m", "avx2 3m", "avx2 10m", "avx2 30m"],
)
def test_the_measured_speeds_choose_what_the_curves_say(rates: dict[str, float], minutes: int, expected: str) -> None:
    """Each network's rate stands for its variants of regularisation too, as `measure` gives them."""
    speeds = {shape: rates[str(shape.timed).replace(" batch 64×64", "")] for shape in SHAPES.values()}
    choice = choose(speeds, minutes * 60 * 0.97)
    assert choice.shape == SHAPES[expected]
    assert [p.bpc for p in choice.predictions[1:]] == sorted(p.bpc for p in choice.predictions[1:])


def test_a_shape_must_beat_the_default_by_the_margin() -> None:
    tie = (Curve(DEFAULT, ((100, 2.5), (200, 2.4))), Curve(Shape(1, 64), ((100, 2.5 - MARGIN / 2), (200, 2.3))))
    assert choose({DEFAULT: 1.0, Shape(1, 64): 1.0}, 100 / 0.93, curves=tie).shape == DEFAULT


def test_a_shape_without_dropout_is_trusted_for_as_many_readings_of_the_corpus_as_measured() -> None:
    """Without dropout a corpus read many times overfits: past the readings its curve measured,
    the regularised shape is chosen instead; on a corpus twice as big it is still within reach."""
    free, regular = Shape(1, 64, dropout=0.0, weight_drop=0.0), Shape(1, 64)
    curves = (Curve(regular, ((100, 2.6), (800, 2.3))), Curve(free, ((100, 2.5), (200, 2.2))))
    rates = {regular: 1.0, free: 1.0}
    steps_400 = 400 / TRAINING_SHARE
    assert choose(rates, 150 / TRAINING_SHARE, curves=curves).shape == free
    assert choose(rates, steps_400, curves=curves, corpus_tokens=CURVE_TOKENS).shape == regular
    assert choose(rates, steps_400, curves=curves, corpus_tokens=2 * CURVE_TOKENS).shape == free
    assert choose({free: 1.0}, steps_400, curves=curves).shape == free  # nothing else: still chosen


def test_shapes_not_reached_within_the_measuring_limit_are_not_candidates() -> None:
    """Cheapest first; once the limit is spent the rest (the bigger ones) are left out, but at
    least one shape is always measured."""
    timed: list[Shape] = []

    def meter(shape: Shape) -> float:
        timed.append(shape)
        return 1.0

    rates, _ = measure(tuple(SHAPES.values()), meter, limit=0.0)
    assert timed == [SMALLEST] and rates and all(shape.timed == SMALLEST for shape in rates)
    timed.clear()
    rates, _ = measure(tuple(SHAPES.values()), meter, limit=60.0)
    assert set(rates) == set(SHAPES.values())


def test_variants_of_regularisation_are_timed_once_and_share_the_rate() -> None:
    timed: list[Shape] = []

    def meter(shape: Shape) -> float:
        timed.append(shape)
        return float(shape.hidden)

    rates, _ = measure(tuple(SHAPES.values()), meter, limit=60.0)
    assert sorted(timed, key=str) == sorted(NETWORKS.values(), key=str)
    assert len(SHAPES) > len(NETWORKS)  # the table has variants of regularisation
    assert all(rate == shape.hidden for shape, rate in rates.items())


TIME_ONLY = TrainConfig(max_time=180)


@pytest.mark.parametrize(
    ("model", "train", "config", "world", "device"),
    [
        ({}, {"max_steps": 500}, TrainConfig(max_steps=500, max_time=0), World(), CPU),
        ({}, {"max_epochs": 2.0}, TrainConfig(max_epochs=2, max_time=0), World(), CPU),
        ({}, {"max_steps": 500}, TrainConfig(max_steps=500, max_time=180), World(), CPU),
        ({"cell": "gru"}, {}, TIME_ONLY, World(), CPU),
        ({}, {}, TIME_ONLY, World(rank=0, size=2), CPU),
        ({}, {}, TIME_ONLY, World(), torch.device("cuda")),
        ({"layers": 3}, {}, TIME_ONLY, World(), CPU),
        ({}, {"batch_size": 32}, TIME_ONLY, World(), CPU),
        ({}, {"seq_len": 128}, TIME_ONLY, World(), CPU),
        ({"layers": 2, "hidden": 512}, {}, TIME_ONLY, World(), CPU),
    ],
    ids=[
        "steps",
        "epochs",
        "steps and time",
        "gru",
        "two ranks",
        "cuda",
        "3 layers",
        "batch 32",
        "window 128",
        "whole model shape",
    ],
)
def test_no_choice_unless_time_is_the_budget_and_the_shape_is_left_open(
    model: dict, train: dict, config: TrainConfig, world: World, device: torch.device
) -> None:
    assert candidates(model, train, config, world, device) == ()


def test_the_shape_options_set_narrow_the_candidates() -> None:
    everything = candidates({}, {}, TIME_ONLY, World(), CPU)
    assert set(everything) == set(SHAPES.values())
    hidden = {s.hidden for s in everything}
    for size in hidden:
        narrowed = candidates({"hidden": size}, {"batch_size": 64}, TIME_ONLY, World(), CPU)
        expected = tuple(s for s in everything if s.hidden == size)
        assert narrowed == (expected if len(expected) > 1 else ())


@pytest.mark.parametrize("option", ["dropout", "weight_drop"])
def test_a_regularisation_option_set_keeps_only_the_candidates_with_it(option: str) -> None:
    for value in {getattr(s, option) for s in SHAPES.values()}:
        narrowed = candidates({option: value}, {}, TIME_ONLY, World(), CPU)
        expected = tuple(s for s in SHAPES.values() if getattr(s, option) == value)
        assert narrowed == (expected if len(expected) > 1 else ())


def test_a_run_chooses_once_stores_its_shape_and_resumes_without_choosing(corpus_file: Path, tmp_path: Path) -> None:
    """A real run with a 2-second budget, its shapes' speeds given: the small one is many times
    faster, so it is chosen, said in one line, trained and saved; the resume keeps it and never
    measures again."""
    small = SMALLEST
    speeds = {shape: 400.0 if shape == small else 0.5 for shape in NETWORKS.values()}
    asked: list[Shape] = []

    def meter(shape: Shape) -> float:
        asked.append(shape)
        return speeds[shape]

    out = tmp_path / "m.pt"
    train = {"max_time": 2.0, "eval_every": 10_000, "sample_chars": 0, "threads": 1}
    recorder = Recorder()
    trainer = prepare(TrainRequest(corpus_file, out, train=train, shape_rates=meter), recorder)
    assert sorted(asked, key=str) == sorted(NETWORKS.values(), key=str)
    assert trainer.shape_choice is not None
    chosen = trainer.shape_choice.shape
    assert chosen.timed == small
    lines = [m for m in recorder.messages if m.startswith("shape ")]
    assert len(lines) == 1 and str(chosen) in lines[0], recorder.messages
    config = trainer.model.config
    assert (config.layers, config.hidden, config.dropout, config.weight_drop) == (
        chosen.layers,
        chosen.hidden,
        chosen.dropout,
        chosen.weight_drop,
    )
    trainer.run()
    saved = load_checkpoint(out.with_name("m.last.pt"))
    assert {k: saved["model_config"][k] for k in ("layers", "hidden", "dropout", "weight_drop")} == {
        "layers": chosen.layers,
        "hidden": chosen.hidden,
        "dropout": chosen.dropout,
        "weight_drop": chosen.weight_drop,
    }
    assert saved["train_config"]["seq_len"] == chosen.seq_len

    def never(shape: Shape) -> float:
        raise AssertionError("a resumed run measured shapes")

    more = {**train, "max_time": 3.0}
    resumed = prepare(TrainRequest(corpus_file, out, train=more, resume=True, shape_rates=never), Recorder())
    assert resumed.shape_choice is None and resumed.model.config.hidden == small.hidden
    assert resumed.model.config.dropout == chosen.dropout
    assert resumed.progress.step == saved["resume"]["step"]
