"""Bits per token and top guesses: the same total as `chargen eval`, for either tokenizer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from chargen.analysis.evaluate import bits_per_char, characters_scored
from chargen.analysis.surprise import read_surprise
from chargen.checkpoint import load_model
from chargen.config import ModelConfig, TokenizerConfig
from chargen.data.tokenizers import train_tokenizer
from chargen.model import CharLM
from tests.helpers import CHINESE, ENGLISH


def test_the_total_is_the_bits_per_character_eval_reports(tiny_checkpoint: Path) -> None:
    loaded = load_model(tiny_checkpoint)
    text = ENGLISH * 8
    ids = loaded.tokenizer.encode(text)
    surprise = read_surprise(loaded.model, loaded.tokenizer, text, ids)
    chars = characters_scored(loaded.tokenizer, ids)
    assert surprise.bpc == pytest.approx(bits_per_char(loaded.model, ids, chars, torch.device("cpu")), rel=1e-5)


def test_lines_weighted_by_their_characters_add_up_to_the_total(tiny_checkpoint: Path) -> None:
    loaded = load_model(tiny_checkpoint)
    text = ENGLISH
    surprise = read_surprise(loaded.model, loaded.tokenizer, text, loaded.tokenizer.encode(text))
    lines = surprise.line_bpc()
    assert len(lines) == text.count("\n")
    lengths = [len(line) + 1 for line in text.splitlines()]
    lengths[0] -= 1  # the first character is not predicted
    assert sum(b * n for b, n in zip(lines, lengths)) / sum(lengths) == pytest.approx(surprise.bpc, rel=1e-6)


def test_guesses_are_the_five_likeliest_tokens_in_order(tiny_checkpoint: Path) -> None:
    loaded = load_model(tiny_checkpoint)
    surprise = read_surprise(loaded.model, loaded.tokenizer, ENGLISH, loaded.tokenizer.encode(ENGLISH))
    assert surprise.guesses[0] == [] and math.isnan(surprise.bits[0])
    probs = [p for _, p in surprise.guesses[1]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0


def test_sentencepiece_pieces_with_byte_fallback_join_into_the_text() -> None:
    tokenizer = train_tokenizer(ENGLISH * 20, TokenizerConfig(kind="sentencepiece", vocab_size=300))
    model = CharLM(ModelConfig(vocab_size=tokenizer.vocab_size, layers=1, hidden=8)).eval()
    text = ENGLISH + CHINESE  # Chinese is unseen: byte-fallback pieces, several per character
    ids = tokenizer.encode(text)
    surprise = read_surprise(model, tokenizer, text, ids)
    assert "".join(surprise.pieces) == text
    assert len(surprise.pieces) == len(ids) > len(text) - len(CHINESE)
