"""A corpus as token ids, memory-mapped: taken from the token cache when an earlier run left them
there, otherwise read, scanned, tokenized and encoded in streaming passes into a new cache file.
No step holds the corpus text; memory stays flat in the corpus's size."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from chargen.config import TokenizerConfig
from chargen.data import token_cache
from chargen.data.corpus import Corpus
from chargen.data.scan import CorpusFacts, Report, Split, bytes_counter, sample, scan
from chargen.data.tokenizers import CharTokenizer, Tokenizer, fingerprint, train_tokenizer

# A new run asks for a tokenizer made from the corpus; a resume or fine-tune brings its own
# (a function, since fine-tuning may grow the vocabulary by the corpus's characters).
Wanted = TokenizerConfig | Callable[[CorpusFacts], Tokenizer]

_COUNT_BLOCK = 1 << 20  # tokens counted at a time: 8 MB as int64


@dataclass
class Tokenized:
    tokenizer: Tokenizer
    ids: torch.Tensor  # (N,) compact dtype, memory-mapped
    cut_tokens: int  # ids before the split's cut
    facts: CorpusFacts
    path: Path  # the cache file

    @property
    def before_cut(self) -> torch.Tensor:
        return self.ids[: self.cut_tokens]

    @property
    def after_cut(self) -> torch.Tensor:
        return self.ids[self.cut_tokens :]


def token_counts(ids: torch.Tensor, vocab_size: int) -> np.ndarray:
    """How often each id occurs in `ids` (vocab_size,), counted in blocks: the ids may be a memory
    map of any size, and one int64 copy of all of them would take 8 bytes per token."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(ids), _COUNT_BLOCK):
        block = ids[start : start + _COUNT_BLOCK].numpy().astype(np.int64)
        counts += np.bincount(block, minlength=vocab_size)
    return counts


def tokenize(
    corpus: Corpus,
    split: Split,
    wanted: Wanted,
    check: Callable[[CorpusFacts], None] | None = None,
    notify: Callable[[str], None] | None = None,
    report: Report | None = None,
) -> Tokenized:
    """The corpus's ids under the wanted tokenizer. `check` sees the corpus's facts (length, hash)
    before any tokenizer is trained or any id encoded, and may refuse them; `notify` hears of
    damaged cache files being rebuilt; `report` hears progress through each pass."""
    folder = token_cache.cache_dir()
    key = _key(corpus, split)
    fingerprint_now = corpus.fingerprint()
    notify = notify or (lambda message: None)
    with token_cache.locked(folder, key):
        token_cache.remove_temps(folder, key)
        current = _current(folder, key, fingerprint_now, notify)
        recipe = _recipe(wanted)
        for file in [f for f in current if recipe is not None and f.header["recipe"] == recipe]:
            if check is not None:
                check(file.facts)
            found = _verified(file, notify)
            if found is not None:
                return found
            current.remove(file)
        facts = current[0].facts if current else scan(corpus, split, report)
        if check is not None:
            check(facts)
        tokenizer = _make_tokenizer(wanted, facts, corpus, report)
        tokenizer_fp = fingerprint(tokenizer)
        for file in (f for f in current if f.header["tokenizer_fp"] == tokenizer_fp):
            found = _verified(file, notify)
            if found is not None:
                return found
        header = {
            "source": str(corpus.path.resolve()),
            "fingerprint": fingerprint_now,
            "read": asdict(corpus.options),
            "split": asdict(split),
            "facts": asdict(facts),
            "recipe": recipe,
            "tokenizer": token_cache.tokenizer_header(tokenizer),
            "tokenizer_fp": tokenizer_fp,
        }
        path = folder / f"{key}-{tokenizer_fp[:16]}{token_cache.SUFFIX}"
        cut = _Cut(corpus.chunks(progress=bytes_counter("encoding", corpus.size, report)), facts.cut)
        parts = [tokenizer.encode_stream(cut.before()), tokenizer.encode_stream(cut.after())]
        built = token_cache.write(path, header, parts, tokenizer.dtype)
        return Tokenized(tokenizer, built.ids(), built.cut_tokens, facts, path)


def _key(corpus: Corpus, split: Split) -> str:
    """Names a corpus path read one way and cut one way; a tokenizer's files share it."""
    identity = [str(corpus.path.resolve()), asdict(corpus.options), asdict(split)]
    return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]


def _recipe(wanted: Wanted) -> dict[str, object] | None:
    """How a new run makes its tokenizer: the same recipe on the same text makes the same one."""
    if not isinstance(wanted, TokenizerConfig):
        return None
    return {"kind": "char"} if wanted.kind == "char" else asdict(wanted)


def _current(
    folder: Path, key: str, fingerprint_now: str, notify: Callable[[str], None]
) -> list[token_cache.TokenFile]:
    """This key's files built from the corpus as it is now. Damaged ones (with a notice) and
    stale ones (the corpus changed since) are removed."""
    current = []
    for path in token_cache.entries(folder, f"{key}-"):
        try:
            file = token_cache.read_header(path)
        except token_cache.Damaged as err:
            notify(f"token cache {path.name} is damaged ({err}); rebuilding it")
            _remove(path)
            continue
        if file.header["fingerprint"] == fingerprint_now:
            current.append(file)
        else:
            _remove(path)
    return current


def _verified(file: token_cache.TokenFile, notify: Callable[[str], None]) -> Tokenized | None:
    try:
        file.verify()
    except token_cache.Damaged as err:
        notify(f"token cache {file.path.name} is damaged ({err}); rebuilding it")
        _remove(file.path)
        return None
    return Tokenized(file.tokenizer(), file.ids(), file.cut_tokens, file.facts, file.path)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _make_tokenizer(wanted: Wanted, facts: CorpusFacts, corpus: Corpus, report: Report | None) -> Tokenizer:
    if not isinstance(wanted, TokenizerConfig):
        return wanted(facts)
    if wanted.kind == "char":
        return CharTokenizer(facts.chars_before_cut)
    text = sample(corpus, facts.cut, wanted.sample_chars, report)
    return train_tokenizer(text, wanted)


class _Cut:
    """One stream of text chunks as two, read one after the other: the first `at` characters,
    then the rest (which also drains the stream, so the reader's end-of-file checks run)."""

    def __init__(self, chunks: Iterable[str], at: int) -> None:
        self.chunks = iter(chunks)
        self.left = at
        self.rest = ""

    def before(self) -> Iterator[str]:
        for chunk in self.chunks:
            if len(chunk) >= self.left:
                if self.left:
                    yield chunk[: self.left]
                self.rest = chunk[self.left :]
                return
            self.left -= len(chunk)
            yield chunk

    def after(self) -> Iterator[str]:
        if self.rest:
            yield self.rest
        yield from self.chunks
