"""`chargen plot` end to end: each format is a real image; missing matplotlib is a one-line hint."""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.helpers import chargen_command

pytest.importorskip("matplotlib", reason='the plot extra is not installed (pip install "chargen[plot]")')


def _plot(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*chargen_command(), "plot", *args], capture_output=True, text=True, env=env)


def test_one_run_is_drawn_as_a_png_beside_its_checkpoint(tiny_checkpoint: Path) -> None:
    result = _plot(str(tiny_checkpoint))
    assert result.returncode == 0, result.stderr
    image = tiny_checkpoint.with_name("tiny.png")
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_overlaid_as_svg_name_each_run_in_the_legend(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare.svg"
    log = tiny_checkpoint.with_name("tiny.metrics.jsonl")
    result = _plot(str(tiny_checkpoint), str(log), "--out", str(out))
    assert result.returncode == 0, result.stderr
    root = ET.parse(out).getroot()
    assert root.tag.endswith("svg")
    assert "tiny validation" in out.read_text(encoding="utf-8")


def test_a_pdf_is_written_by_its_extension(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "curves.pdf"
    assert _plot(str(tiny_checkpoint), "--out", str(out)).returncode == 0
    assert out.read_bytes()[:5] == b"%PDF-"


def test_an_unknown_extension_is_a_one_line_error(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = _plot(str(tiny_checkpoint), "--out", str(tmp_path / "x.gif"))
    assert result.returncode == 1
    assert result.stderr.startswith("Error: ") and ".png, .svg or .pdf" in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_missing_matplotlib_is_a_hint_to_install_the_extra(tiny_checkpoint: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "blocked" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('blocked for the test')\n", encoding="utf-8")
    env = os.environ | {"PYTHONPATH": str(blocker.parent)}
    result = _plot(str(tiny_checkpoint), "--out", str(tmp_path / "x.png"), env=env)
    assert result.returncode == 1
    assert result.stderr.strip() == 'Error: plotting needs matplotlib: pip install "chargen[plot]"'
