"""`chargen report` end to end: one self-contained file whose figures agree with `chargen eval`."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.helpers import ENGLISH, chargen_command

TEXT = ENGLISH + '"Quoted words," (said one) "and more."\n' + ENGLISH


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*chargen_command(), *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def report(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    folder = tmp_path_factory.mktemp("report")
    text = folder / "reading.txt"
    text.write_text(TEXT, encoding="utf-8")
    out = folder / "report.html"
    result = _run("report", str(tiny_checkpoint), str(text), "--out", str(out), "--compare", str(tiny_checkpoint))
    assert result.returncode == 0, result.stderr
    return out, text, result.stdout


def _data(page: Path) -> dict:
    html = page.read_text(encoding="utf-8")
    return json.loads(re.search(r"var DATA = (.*?);\n", html).group(1).replace("<\\/", "</"))


def test_the_total_agrees_with_chargen_eval(report: tuple[Path, Path, str], tiny_checkpoint: Path) -> None:
    page, text, stdout = report
    evaluated = json.loads(_run("eval", str(tiny_checkpoint), str(text), "--format", "json").stdout)
    assert _data(page)["bpc"] == pytest.approx(evaluated["bpc"], abs=5e-5)
    assert stdout.startswith(f"{evaluated['bpc']:.4f} bpc over {evaluated['characters']:,} characters")


def test_the_page_holds_the_whole_text_and_every_panel(report: tuple[Path, Path, str]) -> None:
    data = _data(report[0])
    assert "".join(data["pieces"]) == TEXT
    assert {c["property"] for c in data["cells"]} >= {"inside quotes", "inside brackets", "position in line"}
    assert list(data["gates"][0]["gates"]) == ["input", "forget", "output"]
    assert len(data["reach"]) == 2  # the model and --compare


def test_the_page_fetches_nothing(report: tuple[Path, Path, str]) -> None:
    html = report[0].read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "url(" not in html


def test_a_long_text_is_capped_and_says_so(tiny_checkpoint: Path, tmp_path: Path) -> None:
    text = tmp_path / "long.txt"
    text.write_text(ENGLISH * 5, encoding="utf-8")
    out = tmp_path / "r.html"
    result = _run("report", str(tiny_checkpoint), str(text), "--out", str(out), "--max-chars", "300")
    assert result.returncode == 0, result.stderr
    assert f"reading the first 300 of {len(ENGLISH) * 5:,} characters" in result.stderr
    data = _data(out)
    assert data["characters"] == 300 and data["total_characters"] == len(ENGLISH) * 5


def test_a_text_too_short_is_a_one_line_error(tiny_checkpoint: Path, tmp_path: Path) -> None:
    text = tmp_path / "short.txt"
    text.write_text("ab", encoding="utf-8")
    result = _run("report", str(tiny_checkpoint), str(text), "--out", str(tmp_path / "r.html"))
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and "too short" in result.stderr
