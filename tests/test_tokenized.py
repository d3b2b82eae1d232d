"""The token cache as the training run sees it: built once, reused, rebuilt when stale or damaged."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from chargen.config import TokenizerConfig
from chargen.data import token_cache
from chargen.data.corpus import open_corpus, read_corpus
from chargen.data.scan import Split
from chargen.data.tokenized import Tokenized, token_counts, tokenize
from chargen.data.tokenizers import CharTokenizer
from chargen.errors import CacheError
from tests.helpers import CHINESE, ENGLISH

TAIL = Split("tail", 0.1, 1_000_000)


def build(path: Path, notices: list[str] | None = None, split: Split = TAIL) -> Tokenized:
    notices = notices if notices is not None else []
    return tokenize(open_corpus(path), split, TokenizerConfig(), notify=notices.append)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.txt"
    path.write_text((ENGLISH + CHINESE) * 20, encoding="utf-8")
    return path


def test_ids_equal_encoding_the_whole_text_and_the_cut_is_the_tail(corpus: Path) -> None:
    text = read_corpus(corpus)
    tokens = build(corpus)
    cut = int(len(text) * 0.9)
    assert tokens.tokenizer.chars == CharTokenizer.train(text[:cut]).chars
    assert torch.equal(tokens.ids, tokens.tokenizer.encode(text))
    assert tokens.cut_tokens == cut and tokens.ids.dtype == torch.uint8  # under 256 distinct characters


def test_the_validation_tail_is_capped(corpus: Path) -> None:
    tokens = build(corpus, split=Split("tail", 0.1, 50))
    assert len(tokens.after_cut) == 50


def test_a_second_run_maps_the_same_file_without_rebuilding(corpus: Path) -> None:
    first = build(corpus)
    stamp = first.path.stat().st_mtime_ns
    second = build(corpus)
    assert second.path == first.path and second.path.stat().st_mtime_ns == stamp
    assert torch.equal(first.ids, second.ids)
    assert token_cache.entries(token_cache.cache_dir()) == [first.path]


def test_a_changed_corpus_gets_a_new_cache_and_the_stale_one_is_removed(corpus: Path) -> None:
    first = build(corpus)
    corpus.write_text(ENGLISH * 20, encoding="utf-8")
    second = build(corpus)
    assert torch.equal(second.ids, second.tokenizer.encode(ENGLISH * 20))
    assert token_cache.entries(token_cache.cache_dir()) == [second.path]
    assert first.path == second.path or not first.path.exists()


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-7]), "bytes where its header says"),
        (lambda p: p.write_bytes(p.read_bytes()[:20]), "not a chargen token file"),
        (lambda p: flip(p, 2), "not a chargen token file"),
        (lambda p: flip(p, 90), "its header is damaged"),
        (lambda p: flip(p, p.stat().st_size - 3), "does not match its checksum"),
    ],
    ids=["truncated", "cut-in-header", "bad-magic", "flipped-header-byte", "flipped-data-byte"],
)
def test_a_damaged_cache_is_rebuilt_with_one_notice(
    corpus: Path, damage: Callable[[Path], object], reason: str
) -> None:
    good = build(corpus)
    expected = good.ids.clone()
    damage(good.path)
    notices: list[str] = []
    again = build(corpus, notices)
    assert len(notices) == 1 and reason in notices[0] and "rebuilding it" in notices[0]
    assert torch.equal(again.ids, expected)
    assert token_cache.read_header(again.path).header["length"] == len(expected)
    quiet: list[str] = []
    assert build(corpus, quiet).path == again.path and quiet == []


def test_an_unwritable_cache_folder_is_one_clear_error_and_leaves_nothing(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "cache").write_text("a file where the cache folder should be")
    monkeypatch.setenv("CHARGEN_HOME", str(home))
    with pytest.raises(CacheError, match=r"cannot write the token cache in .*home/cache.*CHARGEN_HOME"):
        build(corpus)
    assert sorted(p.name for p in home.iterdir()) == ["cache"]


def test_a_killed_build_leaves_a_temporary_file_that_the_next_build_removes(corpus: Path) -> None:
    tokens = build(corpus)
    leftover = tokens.path.parent / f".{tokens.path.name}.abcd1234.tmp"
    leftover.write_bytes(b"half a cache")
    tokens.path.unlink()
    again = build(corpus)
    assert not leftover.exists() and torch.equal(again.ids, tokens.ids)


def test_token_counts_of_a_memory_map_are_counted_block_by_block(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text((ENGLISH + CHINESE) * 3000, encoding="utf-8")  # over a million tokens: two blocks
    ids = build(path).ids
    assert len(ids) > 1 << 20
    counts = token_counts(ids, 200)
    assert counts.tolist() == torch.bincount(ids.long(), minlength=200).tolist()


def test_the_cache_command_lists_and_clears_the_cached_corpora(corpus: Path, tmp_path: Path) -> None:
    """The real `chargen cache list|clear` on two corpora's token files, one of them damaged."""
    import subprocess
    import sys

    other = tmp_path / "other.txt"
    other.write_text(ENGLISH * 40, encoding="utf-8")
    lengths = {path.name: len(build(path).ids) for path in (corpus, other)}
    files = sorted(token_cache.cache_dir().glob("*.tokens"))
    assert len(files) == 2

    def cache(command: str) -> str:
        done = subprocess.run([sys.executable, "-m", "chargen", "cache", command], capture_output=True, text=True)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        return done.stdout

    listed = cache("list")
    assert listed.startswith(f"{token_cache.cache_dir()}: 2 files, ")
    for name, length in lengths.items():
        assert re.search(rf"\.tokens +[\d.]+ MB +{length:,} tokens \(char\) +built [\d-]+ [\d:]+ +.*{name}", listed)
    flip(files[0], 90)
    damaged = cache("list")
    assert f"  {files[0].name}  " in damaged and "damaged: " in damaged
    total = sum(f.stat().st_size for f in files)
    assert cache("clear") == f"removed 2 files ({total / 1e6:,.1f} MB) from {token_cache.cache_dir()}\n"
    assert list(token_cache.cache_dir().glob("*.tokens")) == [] and " 0 files, 0.0 MB" in cache("list")
    assert len(build(corpus).ids) == lengths[corpus.name]  # rebuilt when next used
