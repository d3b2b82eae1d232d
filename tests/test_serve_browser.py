"""The playground page of `chargen serve` in real headless Chromium (the system's, driven by
playwright; no browser is downloaded): type a priming text, generate, watch the text stream in,
stop it, switch the confidence colours on, and get the API's text for the same settings."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest

from tests.serving import PRECISION, ServerProcess, wait_for

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BROWSER = next((path for name in BROWSERS if (path := shutil.which(name))), None)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)"
)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("home")
    running = ServerProcess(tiny_checkpoint, "--precision", PRECISION, "--max-tokens", 1_000_000, home=home)
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def page(server: ServerProcess):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=BROWSER, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(server.url)
        page.wait_for_function("document.querySelectorAll('#model option').length > 0")
        yield page
        browser.close()


def generated(page) -> str:  # type: ignore[no-untyped-def]
    return page.eval_on_selector_all("#output span.gen", "spans => spans.map(s => s.textContent).join('')")


def state(page) -> str:  # type: ignore[no-untyped-def]
    return page.get_attribute("#output", "data-state")


def test_text_streams_in_and_stops_on_the_stop_button(page, server: ServerProcess) -> None:  # type: ignore[no-untyped-def]
    page.fill("#prime", "Whan that")
    page.fill("#length", "1000000")
    page.fill("#seed", "")
    page.click("#generate")
    page.wait_for_function("document.querySelectorAll('#output span.gen').length > 20")
    assert state(page) == "streaming" and page.is_enabled("#stop")
    early = len(generated(page))
    assert wait_for(lambda: len(generated(page)) > early + 50)  # still arriving
    assert page.text_content("#output .prime") == "Whan that"
    page.click("#stop")
    page.wait_for_function("document.getElementById('output').dataset.state === 'stopped'")
    running = lambda: httpx.get(f"{server.url}/v1/status").json()["models"]["tiny"]["running"]  # noqa: E731
    assert wait_for(lambda: running() == 0, timeout=3)  # the server let the stream go
    stopped_at = generated(page)
    page.wait_for_timeout(300)
    assert generated(page) == stopped_at and page.is_enabled("#generate")
    assert page.errors == []


def test_the_colour_view_shades_each_character_by_its_probability(page) -> None:  # type: ignore[no-untyped-def]
    assert not page.is_visible("#legend")
    page.check("#color")
    assert page.is_visible("#legend") and page.locator("#scale i").count() == 11
    colours = page.eval_on_selector_all(
        "#output span.gen", "spans => spans.slice(0, 200).map(s => [Number(s.dataset.p), getComputedStyle(s).color])"
    )
    assert colours
    red, green = "rgb(215, 55, 55)", "rgb(70, 190, 90)"
    for prob, colour in colours:
        assert re.fullmatch(r"rgb\(\d+, \d+, \d+\)", colour)
        if prob >= 0.95:
            assert colour == green
        if prob < 0.05:
            assert colour == red
    page.uncheck("#color")
    assert not page.is_visible("#legend")


def test_the_page_writes_the_apis_text_for_the_same_settings(page, server: ServerProcess) -> None:  # type: ignore[no-untyped-def]
    page.fill("#prime", "The droghte")
    page.fill("#length", "120")
    page.fill("#seed", "42")
    page.fill("#temperature", "0.9")
    page.fill("#top-k", "12")
    page.click("#generate")
    page.wait_for_function("document.getElementById('output').dataset.state === 'done'")
    body = {"model": "tiny", "prompt": "The droghte", "max_tokens": 120, "seed": 42, "temperature": 0.9, "top_k": 12}
    expected = httpx.post(f"{server.url}/v1/completions", json=body).json()["choices"][0]["text"]
    assert generated(page) == expected and len(expected) == 120
    assert page.errors == []
