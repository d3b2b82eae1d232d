"""The session's tiny checkpoint (conftest) is what the other tests take it for: a model rebuilt
from the file alone that has learnt its text, not merely a file that loads."""

import math
from pathlib import Path

import torch

from chargen.analysis.evaluate import bits_per_char
from chargen.checkpoint import load_model
from chargen.model import CharLM


def test_the_tiny_checkpoint_has_learnt_its_text(tiny_checkpoint: Path, english_text: str) -> None:
    loaded = load_model(tiny_checkpoint)
    ids = torch.as_tensor(loaded.tokenizer.encode(english_text))
    cpu = torch.device("cpu")
    trained = bits_per_char(loaded.model, ids, len(english_text), cpu)
    torch.manual_seed(0)
    untrained = bits_per_char(CharLM(loaded.model.config), ids, len(english_text), cpu)
    chance = math.log2(loaded.tokenizer.vocab_size)
    assert abs(untrained - chance) < 0.5  # fresh weights guess about uniformly
    assert trained < untrained - 1.0
    metrics = loaded.payload["metrics"]
    assert math.isfinite(metrics["val_bpc"]) and metrics["val_bpc"] < untrained - 0.5
    assert set(loaded.tokenizer.decode(ids[:200].tolist())) <= set(english_text)
