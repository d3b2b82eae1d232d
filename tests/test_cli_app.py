"""The `chargen` command as a whole: its version, and plain output wherever styles do not belong."""

from __future__ import annotations

import os
import subprocess
from importlib.metadata import version
from pathlib import Path

import pexpect
import pytest

from tests.helpers import chargen_command

ESCAPE = "\x1b["


def test_version_prints_the_installed_version() -> None:
    result = subprocess.run([*chargen_command(), "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"chargen {version('chargen')}"


def _info_on_a_terminal(checkpoint: Path, **env: str) -> str:
    command = chargen_command()
    environment = {k: v for k, v in os.environ.items() if k != "NO_COLOR"} | {"TERM": "xterm-256color", **env}
    child = pexpect.spawn(command[0], [*command[1:], "info", str(checkpoint)], env=environment, encoding="utf-8")
    child.expect(pexpect.EOF, timeout=60)
    return child.before


def test_a_terminal_gets_styled_output(tiny_checkpoint: Path) -> None:
    assert ESCAPE in _info_on_a_terminal(tiny_checkpoint)


def test_no_color_gives_plain_output_on_a_terminal(tiny_checkpoint: Path) -> None:
    output = _info_on_a_terminal(tiny_checkpoint, NO_COLOR="1")
    assert "best val bpc" in output
    assert ESCAPE not in output


@pytest.mark.parametrize("command", [["info"], ["train", "--max-steps", "3", "--eval-every", "2"]])
def test_a_pipe_gets_plain_output(command: list[str], tiny_checkpoint: Path, corpus_file: Path, tmp_path: Path) -> None:
    target = [str(tiny_checkpoint)] if command == ["info"] else [str(corpus_file), "--out", str(tmp_path / "m.pt")]
    args = [*chargen_command(), command[0], *target, *command[1:]]
    result = subprocess.run(args, capture_output=True, text=True, check=True, env=os.environ | {"TERM": "xterm"})
    assert result.stdout.strip()
    assert ESCAPE not in result.stdout + result.stderr
