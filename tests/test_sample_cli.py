"""`chargen sample` run as a real program: plain text, JSON Lines, prime files and stdin, --out,
streaming to a terminal, reproducibility across runs, and one-line errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pexpect
import pytest

import chargen
from tests.helpers import chargen_command


# Tests that hold the command's text equal to chargen.load's name the step (fp32) on both sides: with
# 'auto' each process measures its own, and on a busy machine another int8 step may win.
def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*chargen_command(), "sample", *args],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )


def records(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines()]


def test_plain_text_is_the_prime_then_its_continuation(tiny_checkpoint: Path) -> None:
    result = run(str(tiny_checkpoint), "--prime", "Whan", "--length", "60", "--seed", "3", "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    expected = chargen.load(tiny_checkpoint, precision="fp32").generate("Whan", length=60, seed=3)[0]
    assert result.stdout.rstrip("\n") == ("Whan" + expected).rstrip("\n")


def test_jsonl_has_one_object_per_sample_with_every_field(tiny_checkpoint: Path) -> None:
    args = [str(tiny_checkpoint), "-n", "3", "--length", "40", "--seed", "7", "--top-k", "5", "--format", "jsonl"]
    result = run(*args)
    assert result.returncode == 0, result.stderr
    samples = records(result.stdout)
    assert [s["index"] for s in samples] == [0, 1, 2]
    for s in samples:
        assert s.keys() >= {"index", "seed", "prime", "text", "chars", "settings"}
        assert (s["seed"], s["prime"], s["chars"], len(s["text"])) == (7, "", 40, 40)
        assert s["settings"]["top_k"] == 5 and s["settings"]["length"] == 40
    assert len({s["text"] for s in samples}) == 3


def test_runs_repeat_and_sample_i_alone_equals_sample_i_of_the_batch(tiny_checkpoint: Path) -> None:
    args = [str(tiny_checkpoint), "--length", "50", "--seed", "7", "--format", "jsonl"]
    batch = records(run(*args, "-n", "4").stdout)
    assert records(run(*args, "-n", "4").stdout) == batch
    alone = records(run(*args, "--first-index", "2").stdout)
    assert alone == [batch[2]]


def test_prime_file_from_stdin_gives_one_completion_per_line(tiny_checkpoint: Path) -> None:
    lines = ["Whan that", "The droghte", "", "Ω 漢字 unknown"]
    result = run(
        str(tiny_checkpoint), "--prime-file", "-", "--length", "30", "--format", "jsonl", stdin="\n".join(lines) + "\n"
    )
    assert result.returncode == 0, result.stderr
    samples = records(result.stdout)
    assert [s["prime"] for s in samples] == lines
    assert all(s["chars"] == 30 for s in samples)


def test_out_writes_the_file_and_nothing_to_stdout(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "samples.jsonl"
    out.write_text("old contents\n", encoding="utf-8")
    args = [str(tiny_checkpoint), "-n", "2", "--length", "30", "--seed", "1", "--format", "jsonl", "--out", str(out)]
    args += ["--precision", "fp32"]
    result = run(*args)
    assert (result.returncode, result.stdout) == (0, "")
    texts = [s["text"] for s in records(out.read_text(encoding="utf-8"))]
    assert texts == chargen.load(tiny_checkpoint, precision="fp32").generate("", n=2, length=30, seed=1)
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left beside it


def test_several_plain_samples_are_separated_and_stop_strings_take_escapes(tiny_checkpoint: Path) -> None:
    result = run(str(tiny_checkpoint), "-n", "3", "--length", "200", "--seed", "2", "--stop", "\\n", "--greedy")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0::2] == ["--- sample 0 ---", "--- sample 1 ---", "--- sample 2 ---"]
    assert len(result.stdout.splitlines()) == 6  # each greedy sample stopped at its first newline


def test_a_single_sample_streams_to_a_terminal(tiny_checkpoint: Path) -> None:
    command = [*chargen_command(), "sample", str(tiny_checkpoint), "--prime", "Whan", "--length", "80", "--seed", "5"]
    command += ["--precision", "fp32"]
    child = pexpect.spawn(command[0], command[1:], encoding="utf-8", timeout=120)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    expected = "Whan" + chargen.load(tiny_checkpoint, precision="fp32").generate("Whan", length=80, seed=5)[0]
    assert child.before.replace("\r\n", "\n").rstrip("\n") == expected.rstrip("\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--length", "0"], "--length must be positive"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--temperature", "-1"], "--temperature must be a number >= 0"),
        (["--prime-file", "/nonexistent/prompts.txt"], "cannot read prime file /nonexistent/prompts.txt"),
        (["--prime-file", "/"], "cannot read prime file /"),
        (["--format", "csv"], "--format must be text or jsonl"),
    ],
)
def test_bad_settings_are_one_line_errors(tiny_checkpoint: Path, args: list[str], message: str) -> None:
    result = run(str(tiny_checkpoint), *args)
    assert result.returncode != 0
    assert result.stderr.startswith(f"Error: {message}")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("content", [None, b"not a checkpoint at all", b"PK\x03\x04 truncated zip"])
def test_a_missing_or_corrupt_checkpoint_is_a_one_line_error(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    result = run(str(path), "--length", "10")
    assert result.returncode != 0
    assert result.stderr.startswith("Error: ") and str(path) in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
