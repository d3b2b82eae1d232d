"""The benchmark scripts still start: their imports of chargen resolve and their options parse.

Nothing else in the suite imports them, so a change to chargen's internals could break one unseen.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def test_there_are_benchmarks() -> None:
    assert len(BENCHMARKS) >= 5


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda path: path.stem)
def test_the_benchmark_starts_and_describes_its_options(script: Path) -> None:
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def _run_benchmark(name: str, *options: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS[0].parent / f"{name}.py"), *options],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_quality_benchmark_prints_its_figures(corpus_file: Path) -> None:
    """`benchmarks/quality.py` for two seconds of a tiny model: validation bpc over time and the summary."""
    options = "--hidden 32 --layers 1 --batch-size 4 --seq-len 16 --eval-every 20"
    printed = _run_benchmark("quality", str(corpus_file), "--budget", "2s", "--threads", "1", "--options", options)
    assert re.search(r"\(family \d+, model \d+\), corpus .*, budget 2s, threads 1", printed)
    assert re.search(r"step +\d+ +val \d\.\d{3} bpc", printed)
    best = float(re.findall(r"summary: chargen best val (\d+\.\d+) bpc after 2s", printed)[0])
    assert 0 < best < 5.5  # a uniform guess over the text's characters is ~5 bits


def test_the_sampling_benchmark_prints_its_figures(tiny_checkpoint: Path) -> None:
    """`benchmarks/sampling.py` on the tiny checkpoint, a few hundred characters: a speed and a
    ratio for every candidate step, for one stream and for 64, and each step's held-out bpc."""
    sizes = ["--single-chars", "200", "--batch-chars", "20", "--repeats", "1", "--threads", "1", "--no-cli"]
    printed = _run_benchmark("sampling", "--checkpoint", str(tiny_checkpoint), *sizes)
    for streams in ("1 stream", "64 streams"):
        assert re.search(rf"{streams} +· reference +[\d,]+ chars/s", printed), printed
    assert re.search(r"fp32/1t +[\d,]+ chars/s \(\d+\.\dx\)", printed)
    assert re.search(r"auto \([\w-]+/1t\) +[\d,]+ chars/s", printed)
    assert re.search(r"quality: held-out bpc fp32 \d\.\d{4}", printed)


def test_the_shapes_benchmark_prints_its_table(corpus_file: Path) -> None:
    """`benchmarks/shapes.py` with two tiny shapes and two step budgets: one row per shape, bpc per budget."""
    options = ["--shapes", "1x16/4x16,2x8/4x16", "--steps", "4,8", "--jobs", "1", "--options", "--warmup 2"]
    printed = _run_benchmark("shapes", str(corpus_file), *options)
    assert re.search(r"\(family \d+, model \d+\), corpus .*, 1 thread per run, 1 at once", printed)
    for shape in ("1x16/4x16", "2x8/4x16"):
        row = rf"^{re.escape(shape)} +\d\.\d{{3}} +\d\.\d{{3}} +\(\d+\.\d\d steps/s\)$"
        assert re.search(row, printed, re.M), printed
