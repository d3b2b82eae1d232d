"""The report opened in a real browser (headless Chromium): it renders the text and every panel,
and its script raises no error. The page writes any script error into its own DOM, so the DOM
that Chromium dumps after running the page shows them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from chargen.checkpoint import load_model
from tests.helpers import ENGLISH, chargen_command

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BROWSER = next((path for name in BROWSERS if (path := shutil.which(name))), None)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)"
)


def _dump_dom(page: Path, profile: Path) -> str:
    command = [
        BROWSER,
        "--headless",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-gpu",
        f"--user-data-dir={profile}",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def page(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("browser")
    text = folder / "reading.txt"
    text.write_text(ENGLISH + '"a quote" (and brackets)\n', encoding="utf-8")
    out = folder / "report.html"
    args = ["report", str(tiny_checkpoint), str(text), "--out", str(out), "--compare", str(tiny_checkpoint)]
    subprocess.run([*chargen_command(), *args], check=True, capture_output=True)
    return out


def test_the_report_renders_every_panel_without_errors(page: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    dom = _dump_dom(page, tmp_path / "profile")
    root = re.search(r"<html[^>]*>", dom).group(0)
    assert "data-errors" not in root
    assert 'data-rendered="ok"' in root
    # Every character of the text is a shaded span in the surprise panel.
    surprise = dom[dom.index('id="surprise-text"') : dom.index('id="cells"')]
    assert len(re.findall(r"<span data-i=", surprise)) >= len(ENGLISH)
    assert "Whan that Aprille" in re.sub(r"<[^>]+>", "", surprise)
    # Cells: a legend row and strips per matched property; gates: one plot per gate of the layer.
    assert "inside quotes" in dom and 'class="strip"' in dom
    layers = load_model(tiny_checkpoint).model.config.layers
    assert dom.count("<figure>") == 3 * layers
    assert dom.count('class="reach-line"') == 2


def test_a_script_error_would_be_caught(page: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    html = page.read_text(encoding="utf-8")
    broken.write_text(html.replace("header(); surprise();", "header(); notDefinedAnywhere();"), encoding="utf-8")
    root = re.search(r"<html[^>]*>", _dump_dom(broken, tmp_path / "profile")).group(0)
    assert "notDefinedAnywhere" in root and "data-rendered" not in root
