"""Progress of long passes as a user sees it: a bar with its rate and time left on a real
terminal (a pty), plain lines when the output is not a terminal, nothing with --quiet."""

from __future__ import annotations

import io
import os
import re
import subprocess
from pathlib import Path

import pexpect
from rich.console import Console

from chargen.cli.progress import PLAIN_EVERY, WorkProgress
from tests.helpers import ENGLISH, FAST, big_corpus, chargen_command

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def on_a_terminal(*args: object, home: Path) -> str:
    """The whole screen output of `chargen ARGS` in a pseudo-terminal, escape codes removed."""
    command = chargen_command()
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env |= {"TERM": "xterm-256color", "CHARGEN_HOME": str(home)}
    child = pexpect.spawn(command[0], [*command[1:], *map(str, args)], env=env, encoding="utf-8", dimensions=(24, 160))
    child.expect(pexpect.EOF, timeout=300)
    child.close()
    assert child.exitstatus == 0, child.before
    return ANSI.sub("", child.before)


def in_a_pipe(*args: object, home: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"TERM": "xterm-256color", "CHARGEN_HOME": str(home)}
    return subprocess.run([*chargen_command(), *map(str, args)], capture_output=True, text=True, env=env, check=True)


def test_encoding_a_big_corpus_shows_a_bar_with_mb_per_second_and_time_left(tmp_path: Path) -> None:
    corpus = big_corpus(tmp_path / "big.txt", 40)
    screen = on_a_terminal("train", corpus, *FAST, "--max-steps", "1", "--out", tmp_path / "m.pt", home=tmp_path)
    assert re.search(r"encoding .*\d+ MB\s+\d+ MB/s\s+(\d+:\d\d:\d\d|-:--:--)", screen), screen[-2000:]


def test_encoding_in_a_pipe_has_no_bar_and_quiet_prints_nothing(tmp_path: Path) -> None:
    corpus = big_corpus(tmp_path / "big.txt", 40)
    train = ("train", corpus, *FAST, "--max-steps", "1", "--out", tmp_path / "m.pt")
    piped = in_a_pipe(*train, home=tmp_path / "piped")
    assert "\x1b[" not in piped.stdout + piped.stderr and "━" not in piped.stdout + piped.stderr
    quiet = in_a_pipe(*train, "--quiet", home=tmp_path / "quiet")
    assert quiet.stdout == "" and quiet.stderr == ""


def test_evaluating_a_file_shows_the_scoring_bar_on_a_terminal(tiny_checkpoint: Path, tmp_path: Path) -> None:
    text = tmp_path / "other.txt"
    text.write_text(ENGLISH * 3000, encoding="utf-8")  # 1.3 MB: a few seconds of scoring
    screen = on_a_terminal("eval", tiny_checkpoint, text, home=tmp_path)
    assert re.search(r"scoring .*\d[\d,]* tokens\s+\d[\d,]* tokens/s", screen), screen[-2000:]
    assert re.search(r"\d\.\d{4} bpc over [\d,]+ characters", screen)


def test_evaluating_in_a_pipe_prints_the_figure_alone_and_quiet_nothing_else(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    text = tmp_path / "other.txt"
    text.write_text(ENGLISH * 300, encoding="utf-8")
    piped = in_a_pipe("eval", tiny_checkpoint, text, home=tmp_path)
    assert re.fullmatch(r"\d\.\d{4} bpc over [\d,]+ characters of \S+\n", piped.stdout)
    assert "\x1b[" not in piped.stderr
    quiet = in_a_pipe("eval", tiny_checkpoint, text, "--quiet", home=tmp_path)
    assert quiet.stdout == piped.stdout and quiet.stderr == ""


def test_plain_progress_is_a_line_every_few_seconds_and_one_at_the_end() -> None:
    """The clock is the test's, so the cadence is checked without waiting for it."""
    now = [0.0]
    screen = io.StringIO()
    progress = WorkProgress(Console(file=screen, width=200), interactive=False, clock=lambda: now[0])
    for second, done in [(0, 0), (1, 10_000_000), (PLAIN_EVERY + 1, 110_000_000), (PLAIN_EVERY + 2, 120_000_000)]:
        now[0] = second
        progress.update("encoding", done, 400_000_000)
    now[0] = 40.0
    progress.update("encoding", 400_000_000, 400_000_000)
    assert screen.getvalue().splitlines() == [
        "encoding: 110 MB of 400 MB (28%), 10 MB/s, 29s left",
        "encoding: 400 MB in 40.0s (10 MB/s)",
    ]
