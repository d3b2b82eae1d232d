"""What must be known about a corpus before it can be encoded, found in one streaming pass: its
length in characters, its content hash, where validation starts, and which characters it uses.
Also the bounded sample a SentencePiece model is trained on."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from chargen.data.corpus import Corpus

CODE_POINTS = 0x110000
SAMPLE_SPAN = 1 << 16  # characters per piece of a tokenizer's training sample

Report = Callable[[str, int, int], None]  # (what is being done, bytes done, bytes in all)


@dataclass(frozen=True)
class Split:
    """Where a text is cut in two. `tail`: training text, then the validation tail, which is the
    last `frac` of the text but at most `max_chars` characters. `head`: a validation file whose
    first `max_chars` characters are scored. `none`: the whole text is one part."""

    kind: Literal["tail", "head", "none"] = "none"
    frac: float = 0.0
    max_chars: int = 0

    def cut(self, chars: int) -> int:
        """Characters before the cut."""
        if self.kind == "tail":
            return max(int(chars * (1 - self.frac)), chars - self.max_chars)
        if self.kind == "head":
            return min(chars, self.max_chars)
        return chars


@dataclass(frozen=True)
class CorpusFacts:
    sha256: str  # of the text as read (UTF-8, newlines as normalised): what a resume compares
    chars: int
    cut: int  # characters before the split's cut
    chars_seen: str  # every distinct character, sorted
    chars_before_cut: str  # those that occur before the cut: a new char tokenizer's vocabulary


def scan(corpus: Corpus, split: Split, report: Report | None = None) -> CorpusFacts:
    """One pass: hash, count, and the first position of every code point, so that once the
    length (hence the cut) is known, the characters of the first part are known too."""
    digest = hashlib.sha256()
    seen = np.zeros(CODE_POINTS, dtype=bool)  # 1 MB: a gather from it stays in cache
    first_seen = np.full(CODE_POINTS, -1, dtype=np.int64)
    position = 0
    for chunk in corpus.chunks(progress=bytes_counter("reading", corpus.size, report)):
        digest.update(chunk.encode("utf-8"))
        codepoints = np.frombuffer(chunk.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        known = np.take(seen, codepoints)
        if not known.all():
            new = np.flatnonzero(~known)
            unique, first = np.unique(codepoints[new], return_index=True)
            first_seen[unique] = position + new[first]
            seen[unique] = True
        position += len(codepoints)
    cut = split.cut(position)
    return CorpusFacts(
        digest.hexdigest(),
        position,
        cut,
        _characters(np.flatnonzero(seen)),
        _characters(np.flatnonzero(seen & (first_seen < cut))),
    )


def sample(corpus: Corpus, end: int, size: int, report: Report | None = None) -> str:
    """Up to `size` characters of the first `end`, as evenly spaced runs of SAMPLE_SPAN characters
    (the whole of it when it is shorter): the same sample on every run, drawn from the whole text."""
    if end <= size:
        spans = [(0, end)]
    else:
        count = max(1, size // SAMPLE_SPAN)
        starts = [i * (end - SAMPLE_SPAN) // max(count - 1, 1) for i in range(count)]
        spans = [(start, start + SAMPLE_SPAN) for start in starts]
    parts: list[list[str]] = [[] for _ in spans]
    position, first = 0, 0  # spans before `first` are complete
    for chunk in corpus.chunks(progress=bytes_counter("sampling", corpus.size, report)):
        low, high = position, position + len(chunk)
        for i in range(first, len(spans)):
            start, stop = spans[i]
            if start >= high:
                break
            parts[i].append(chunk[max(start - low, 0) : stop - low])
            if stop <= high:
                first = i + 1
        position = high
    return "\n".join("".join(part) for part in parts)


def _characters(codepoints: np.ndarray) -> str:
    return "".join(map(chr, codepoints.tolist()))


def bytes_counter(task: str, total: int, report: Report | None) -> Callable[[int], None] | None:
    """A reader's progress hook (bytes read since last told) that reports the running total."""
    if report is None:
        return None
    done = 0

    def count(size: int) -> None:
        nonlocal done
        done += size
        report(task, done, total)

    return count
