"""Shared fixtures: small real texts and one tiny trained checkpoint for the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers import ENGLISH, TINY_MODEL, tiny_train

# One intra-op thread: with two cores and other processes busy, torch's default of two threads
# can run many times slower. Subprocesses inherit the environment variable.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _session_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same for session and module fixtures (the tiny checkpoint, shared runs), which start
    before any test's own home is set: their token caches stay out of the real home too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHARGEN_HOME", str(tmp_path_factory.mktemp("session-home")))
        yield


@pytest.fixture(autouse=True)
def _chargen_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep user files (REPL history and the like) out of the real home directory."""
    monkeypatch.setenv("CHARGEN_HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="session")
def english_text() -> str:
    return ENGLISH * 30


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory, english_text: str) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "chaucer.txt"
    path.write_text(english_text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    """A 1×32 LSTM trained for 60 steps on the Chaucer text: small, real, and already learning."""
    from chargen.training.run import TrainRequest, prepare

    out = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    request = TrainRequest(corpus_file, out, model=TINY_MODEL, train=tiny_train(max_steps=60, eval_every=30))
    prepare(request).run()
    return out
