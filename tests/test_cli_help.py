"""--help shows each default as its config dataclass sets it (one source for each default)."""

from __future__ import annotations

import subprocess

import pytest

from chargen.config import DIST_TIMEOUT, ClassifierConfig, ModelConfig, TokenizerConfig, TrainConfig, format_duration
from tests.helpers import chargen_command

SHARED = {
    "--tokenizer": TokenizerConfig().kind,
    "--vocab-size": TokenizerConfig().vocab_size,
    "--layers": ModelConfig(vocab_size=2).layers,
    "--hidden": ModelConfig(vocab_size=2).hidden,
    "--embed": ModelConfig(vocab_size=2).embed,
    "--dropout": ModelConfig(vocab_size=2).dropout,
    "--weight-drop": ModelConfig(vocab_size=2).weight_drop,
    "--batch-size": TrainConfig().batch_size,
    "--seq-len": TrainConfig().seq_len,
    "--lr": TrainConfig().lr,
    "--max-time": format_duration(TrainConfig().max_time),
    "--eval-every": TrainConfig().eval_every,
    "--patience": TrainConfig().patience,
    "--seed": TrainConfig().seed,
    "--device": TrainConfig().device,
    "--precision": TrainConfig().precision,
}
TRAIN = {
    **SHARED,
    "--val-frac": TrainConfig().val_frac,
    "--val-max-chars": TrainConfig().val_max_chars,
    "--sp-type": TokenizerConfig().model_type,
    "--sp-sample-chars": TokenizerConfig().sample_chars,
    "--cell": ModelConfig(vocab_size=2).cell,
    "--weight-decay": TrainConfig().weight_decay,
    "--warmup": TrainConfig().warmup_steps,
    "--grad-clip": TrainConfig().grad_clip,
    "--dist-timeout": format_duration(DIST_TIMEOUT),
}
CLASSIFY = {
    **SHARED,
    "--method": ClassifierConfig().method,
    "--val-frac": ClassifierConfig().val_frac,
    "--pretrain-frac": ClassifierConfig().pretrain_frac,
    "--finetune-lr": ClassifierConfig().finetune_lr,
    "--examples-per-batch": ClassifierConfig().batch_size,
    "--max-len": ClassifierConfig().max_len,
    "--pooling": ClassifierConfig().pooling,
}


def help_lines(*command: str) -> dict[str, str]:
    """Each option's help text, its wrapped lines joined."""
    shown = subprocess.run([*chargen_command(), *command, "--help"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    options: dict[str, str] = {}
    option = ""
    for line in shown.stdout.splitlines():
        if line.strip().startswith("-"):
            option = next(word for word in line.split() if word.startswith("--"))
            options[option] = line
        elif option and line.strip():
            options[option] += " " + line.strip()
    return options


@pytest.mark.parametrize(("command", "defaults"), [(["train"], TRAIN), (["classify", "train"], CLASSIFY)])
def test_help_shows_the_config_defaults(command: list[str], defaults: dict[str, object]) -> None:
    lines = help_lines(*command)
    for option, value in defaults.items():
        assert f"[{value}" in lines[option], (option, value, lines[option])


def test_durations_are_shown_as_the_options_take_them() -> None:
    assert [format_duration(s) for s in (600, 300, 90, 5400, 3600, 0.5)] == ["10m", "5m", "90s", "90m", "1h", "0.5s"]
