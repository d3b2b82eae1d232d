import numpy as np
import pytest
import torch

from chargen.config import TokenizerConfig
from chargen.data.tokenizers import CharTokenizer, compact_dtype, tokenizer_from_state, train_tokenizer
from chargen.errors import ConfigError
from tests.helpers import CHINESE, ENGLISH


def test_char_vocabulary_is_the_corpus_characters_plus_unknown() -> None:
    tok = CharTokenizer.train("hello")
    assert tok.vocab_size == 5  # e h l o + unknown
    assert tok.decode(tok.encode("hello")) == "hello"


def test_char_encoding_uses_a_compact_dtype() -> None:
    assert CharTokenizer.train(ENGLISH).encode(ENGLISH).dtype == torch.uint8
    assert compact_dtype(300) == np.int16
    assert compact_dtype(40000) == np.int32


def test_unseen_characters_map_to_unknown_instead_of_crashing() -> None:
    tok = CharTokenizer.train("abc")
    ids = tok.encode("abz€c")
    assert ids.tolist() == [1, 2, 0, 0, 3]
    assert tok.decode(ids) == "ab\ufffd\ufffdc"


def test_code_points_not_bytes() -> None:
    tok = CharTokenizer.train(CHINESE)
    ids = tok.encode(CHINESE)
    assert len(ids) == len(CHINESE)
    assert tok.decode(ids) == CHINESE


def test_char_state_round_trip() -> None:
    tok = CharTokenizer.train(CHINESE + ENGLISH)
    again = tokenizer_from_state(tok.state())
    assert again.encode(ENGLISH).tolist() == tok.encode(ENGLISH).tolist()


@pytest.fixture(scope="module")
def sentencepiece():
    return train_tokenizer(ENGLISH * 20, TokenizerConfig(kind="sentencepiece", vocab_size=300))


@pytest.mark.parametrize(
    "text",
    [
        "Whan that Aprille\n\nwith  two  spaces ",
        " leading space",
        "中文 never seen ñ",
        "\u2581literal mark\u2581",
        "\x00\t\r",
    ],
)
def test_sentencepiece_round_trips_any_text(sentencepiece, text: str) -> None:
    assert sentencepiece.decode(sentencepiece.encode(text)) == text


def test_sentencepiece_model_travels_in_the_state(sentencepiece) -> None:
    again = tokenizer_from_state(sentencepiece.state())
    assert again.encode(ENGLISH).tolist() == sentencepiece.encode(ENGLISH).tolist()
    assert again.vocab_size == 300


def test_sentencepiece_vocab_size_too_large_quotes_the_limit() -> None:
    with pytest.raises(ConfigError, match=r"--vocab-size 5000 is too large for this corpus; use at most \d+"):
        train_tokenizer(ENGLISH, TokenizerConfig(kind="sentencepiece", vocab_size=5000))


def test_sentencepiece_vocab_size_too_small_quotes_the_minimum() -> None:
    with pytest.raises(ConfigError, match=r"--vocab-size 50 is too small for this corpus; use at least \d+"):
        train_tokenizer(ENGLISH, TokenizerConfig(kind="sentencepiece", vocab_size=50))
