"""The sampling rows of the bad-input matrix (../shared/RELIABILITY.md), through `chargen sample`
run in-process, plus the two that need a real pipe or a crafted model.

Covered elsewhere, not repeated here:
- temperature 0 is the model's argmax: test_sample::test_temperature_zero_is_the_models_argmax
- --length 0, --top-p 0 or 1.5, --temperature -1: test_sample_cli::test_bad_settings_are_one_line_errors
- an empty prime starts as after a newline: test_sample::test_an_empty_prime_starts_as_after_a_newline
- the REPL rows (stdin not a terminal, EOF exits 0, Ctrl-C during generation, unknown commands and
  bad values, an unwritable history file): test_repl
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from chargen.config import ModelConfig, SampleConfig, TokenizerConfig
from chargen.data.tokenizers import SentencePieceTokenizer, train_tokenizer
from chargen.generation.sampler import Sampler
from chargen.model import CharLM
from tests.helpers import ENGLISH, assert_clear_error, chargen_command, run_cli


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    return lambda *args: run_cli(capsys, monkeypatch, *args)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--temperature", "nan"], "--temperature must be a number >= 0, got nan"),
        (["--temperature", "-0.5"], "--temperature must be a number >= 0, got -0.5"),
        (["--top-p", "nan"], "--top-p must be in (0, 1], got nan"),
        (["--top-p", "-0.1"], "--top-p must be in (0, 1], got -0.1"),
        (["--top-k", "-1"], "--top-k must be >= 0, got -1"),
        (["--length", "-5"], "--length must be positive, got -5"),
    ],
    ids=["nan-temperature", "negative-temperature", "nan-top-p", "negative-top-p", "negative-top-k", "negative-length"],
)
def test_sampling_bad_setting_is_one_line(cli, tiny_checkpoint: Path, flags: list[str], message: str) -> None:
    outcome = cli("sample", tiny_checkpoint, *flags)
    assert_clear_error(outcome, message, code=1)
    assert outcome.stdout == ""


def test_sampling_temperature_zero_is_greedy_and_never_nan(cli, tiny_checkpoint: Path) -> None:
    runs = [cli("sample", tiny_checkpoint, "--temperature", "0", "--length", "80", "--seed", str(s)) for s in (1, 2)]
    greedy = cli("sample", tiny_checkpoint, "--greedy", "--length", "80")
    assert all(r.code == 0 for r in [*runs, greedy])
    assert runs[0].stdout == runs[1].stdout == greedy.stdout  # no randomness left, and no NaN garbage
    assert len(greedy.stdout.rstrip("\n")) == 80


def test_sampling_top_k_larger_than_the_vocabulary_is_clamped(cli, tiny_checkpoint: Path) -> None:
    base = ["sample", tiny_checkpoint, "--length", "80", "--seed", "4"]
    huge, off = cli(*base, "--top-k", "1000000"), cli(*base, "--top-k", "0")
    assert huge.code == 0 and huge.stderr == ""
    assert huge.stdout == off.stdout


def test_sampling_empty_prime_starts_from_a_documented_state(cli, tiny_checkpoint: Path) -> None:
    empty = cli("sample", tiny_checkpoint, "--prime", "", "--length", "40", "--seed", "9", "--format", "jsonl")
    newline = cli("sample", tiny_checkpoint, "--prime", "\n", "--length", "40", "--seed", "9", "--format", "jsonl")
    assert empty.code == 0 and empty.stderr == ""
    assert json.loads(empty.stdout)["text"] == json.loads(newline.stdout)["text"]  # as if after a newline


def test_sampling_jsonl_with_non_ascii_and_newlines_is_one_object_per_line(
    cli, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    prime = "naïve «quoted» 漢字 🙂\nsecond line\r\n\tthird\n"
    prime_file = tmp_path / "prime.txt"
    prime_file.write_text(prime, encoding="utf-8", newline="")
    outcome = cli("sample", tiny_checkpoint, "--prime-file", prime_file, "--whole-file", "-n", "3",
                  "--length", "120", "--seed", "1", "--format", "jsonl")  # fmt: skip
    assert outcome.code == 0, outcome.stderr
    lines = outcome.stdout.split("\n")
    assert lines[-1] == "" and len(lines) == 4  # three lines, each ending in a newline
    records = [json.loads(line) for line in lines[:-1]]
    assert [r["prime"] for r in records] == [prime.replace("\r\n", "\n")] * 3
    assert "漢字 🙂" in lines[0]  # readable, not \\u escapes
    assert any("\n" in r["text"] for r in records)  # generated newlines stayed inside the strings


def test_sampling_output_piped_into_head_exits_quietly(tiny_checkpoint: Path) -> None:
    # Far more than a pipe holds, so the writer meets the closed pipe.
    process = subprocess.Popen(
        [*chargen_command(), "sample", str(tiny_checkpoint), "-n", "3000", "--length", "100", "--seed", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    head = process.stdout.read(200)  # what `head -c 200` would take
    process.stdout.close()
    stderr = process.stderr.read().decode()
    # typer turns the closed pipe (EPIPE) into a silent exit status 1, as a shell reports `yes | head`
    # as a failure; what matters is that nothing lands on stderr.
    assert process.wait(timeout=120) == 1, stderr
    assert len(head) == 200 and stderr == ""


# --- SentencePiece byte fallback: half a character is never printed ---------------------------


def byte_cycle_model(tokenizer: SentencePieceTokenizer, cycle: list[int], start: int) -> CharLM:
    """An RNN whose greedy next token is fixed by the current one: start -> cycle[0] -> cycle[1]
    -> ... -> cycle[0]. Each token's embedding is its own unit vector, copied into the state."""
    vocab = tokenizer.vocab_size
    model = CharLM(ModelConfig(vocab_size=vocab, cell="rnn", layers=1, hidden=vocab, embed=vocab, dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.weight.copy_(torch.eye(vocab) * 10)  # tanh(10) ~ 1: the state is the token
        model.rnn.weight_ih_l0.copy_(torch.eye(vocab))
        for current, following in zip([start, *cycle], [*cycle, cycle[0]]):
            model.head.weight[following, current] = 50.0
    return model.eval()


def test_sentencepiece_byte_pieces_are_buffered_until_a_character_is_whole() -> None:
    tokenizer = train_tokenizer(ENGLISH * 20, TokenizerConfig(kind="sentencepiece", vocab_size=300))
    assert isinstance(tokenizer, SentencePieceTokenizer)
    pieces = [tokenizer._sp.piece_to_id(f"<0x{b:02X}>") for b in "中".encode()]  # three byte pieces
    start = int(tokenizer.encode("\n")[-1])
    sampler = Sampler(byte_cycle_model(tokenizer, pieces, start), tokenizer)
    config = SampleConfig(length=6, temperature=0)
    streamed = [step.texts[0] for step in sampler.stream(sampler.read([""]), config)]
    assert all("\ufffd" not in text for text in streamed)
    assert [t for t in streamed if t] == ["中"] * 6  # each character once its third byte arrives
    assert sampler.generate([""], config) == ["中" * 6]
