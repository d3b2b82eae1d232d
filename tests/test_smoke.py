from pathlib import Path

from chargen.checkpoint import load_model


def test_tiny_checkpoint_loads(tiny_checkpoint: Path) -> None:
    loaded = load_model(tiny_checkpoint)
    assert loaded.payload["metrics"]["step"] == 60
