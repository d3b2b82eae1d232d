"""Read a user's text (a file or a folder of files) strictly, as a stream of decoded chunks.

The text is never held whole: files are read `CHUNK_BYTES` at a time and decoded incrementally,
so a multi-byte character, a CRLF pair or a BOM split across two reads comes out as if the file
had been read at once, and an invalid byte is still reported with its file and absolute offset.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from chargen.errors import CorpusError

FILE_SEPARATOR = "\n\n"
CHUNK_BYTES = 1 << 22  # read size; tests make it tiny so that every split across reads is exercised
_SNIFF_BYTES = 8192
_BOM = b"\xef\xbb\xbf"
# Control bytes that never appear in text; \t \n \v \f \r and ESC are allowed.
_BINARY_BYTES = frozenset(range(32)) - {9, 10, 11, 12, 13, 27}

Progress = Callable[[int], None]  # told the number of bytes read since it was last told


@dataclass(frozen=True)
class ReadOptions:
    errors: str = "strict"  # "strict" or "replace"
    normalize_newlines: bool = True  # CRLF and lone CR -> LF
    allow_binary: bool = False


@dataclass(frozen=True)
class SourceFile:
    path: Path
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Corpus:
    """A corpus path, its files in reading order with the size and time each had when listed,
    and how to read them. Reading checks every file against its listing, so a file that changes
    between two passes over the corpus (or during one) is an error, never a silent mix."""

    path: Path
    files: tuple[SourceFile, ...]
    options: ReadOptions
    is_folder: bool

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def fingerprint(self) -> str:
        """Changes when a file is added, removed, resized or touched: cheap to take (no reading)."""
        listing = [
            [str(f.path.relative_to(self.path)) if self.is_folder else "", f.size, f.mtime_ns] for f in self.files
        ]
        return hashlib.sha256(json.dumps([asdict(self.options), listing]).encode()).hexdigest()

    def chunks(self, chunk_bytes: int | None = None, progress: Progress | None = None) -> Iterator[str]:
        """The corpus text, in pieces: a file's text, or a folder's text files joined by a blank
        line (each file's trailing newlines dropped) and ending in one newline. Files in a folder
        that look binary are skipped (they are usually images or archives beside the text); a
        single file that looks binary is an error. Raises at the end if the text is blank."""
        chunk_bytes = chunk_bytes or CHUNK_BYTES
        pieces = self._folder_pieces(chunk_bytes, progress) if self.is_folder else None
        if pieces is None:
            pieces = _FileReader(self.files[0], self.options, chunk_bytes, progress).chunks()
        blank = True
        for piece in pieces:
            if blank and piece and not piece.isspace():
                blank = False
            yield piece
        if blank:
            raise CorpusError(f"{self.path} is empty (or only whitespace); chargen needs text to learn from")

    def _folder_pieces(self, chunk_bytes: int, progress: Progress | None) -> Iterator[str]:
        included = 0
        for file in self.files:
            reader = _FileReader(file, self.options, chunk_bytes, progress)
            if not self.options.allow_binary and reader.looks_binary:
                reader.close()
                continue
            if included:
                yield FILE_SEPARATOR
            included += 1
            held = 0  # trailing newlines seen so far: dropped if the file ends with them
            for piece in reader.chunks():
                core = piece.rstrip("\n")
                if core:
                    yield "\n" * held + core
                    held = 0
                held += len(piece) - len(core)
        if not included:
            raise CorpusError(f"{self.path} holds no text files; put .txt (UTF-8) files in it")
        yield "\n"


def looks_binary(data: bytes) -> bool:
    """NUL or other control bytes in the first few KB: PNG and ELF files decode as UTF-8, so sniff."""
    head = data[:_SNIFF_BYTES]
    if not head:
        return False
    bad = sum(1 for b in head if b in _BINARY_BYTES)
    return b"\x00" in head or bad / len(head) > 0.01


def open_corpus(path: str | Path, options: ReadOptions = ReadOptions()) -> Corpus:
    """List the corpus's files (a folder recursively, in sorted order, hidden files skipped)."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"{path} does not exist; give a text file or a folder of text files")
    if not path.is_dir():
        return Corpus(path, (_listed(path, None),), options, is_folder=False)
    files = tuple(_folder_files(path))
    if not files:
        raise CorpusError(f"{path} holds no text files; put .txt (UTF-8) files in it")
    return Corpus(path, files, options, is_folder=True)


def read_corpus(path: str | Path, options: ReadOptions = ReadOptions()) -> str:
    """The whole text as one string: for small texts only (priming files, reference benchmarks);
    training and evaluation stream the corpus instead."""
    return "".join(open_corpus(path, options).chunks())


def decode(data: bytes, name: str, options: ReadOptions) -> str:
    """Bytes already in memory (a small file: a labelled example, a priming text), read exactly
    as a corpus file would be."""
    if not options.allow_binary and looks_binary(data):
        raise _binary_error(name)
    skip = len(_BOM) if data.startswith(_BOM) else 0
    return "".join(_decoded(name, options, [data[skip:]], skip, lambda at: data.count(b"\n", 0, at) + 1))


def folder_files(folder: Path) -> list[Path]:
    """The visible files under `folder`, recursively, in the order a corpus reads them."""
    return [file.path for file in _folder_files(folder)]


def split_validation(text: str, val_frac: float) -> tuple[str, str]:
    """The last `val_frac` of the text, as one contiguous tail (nanoGPT's convention)."""
    cut = int(len(text) * (1 - val_frac))
    return text[:cut], text[cut:]


def _listed(path: Path, entry: os.DirEntry[str] | None) -> SourceFile:
    try:
        stat = entry.stat() if entry is not None else path.stat()
    except OSError as err:
        raise CorpusError(f"cannot read {path}: {err.strerror or err}") from None
    return SourceFile(path, stat.st_size, stat.st_mtime_ns)


def _folder_files(folder: Path) -> Iterator[SourceFile]:
    """Depth first with each folder's entries sorted by name: the order of sorting the full paths
    part by part. Hidden entries are skipped; symlinked folders are not entered."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as err:
        raise CorpusError(f"cannot read {folder}: {err.strerror or err}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):
            yield from _folder_files(Path(entry.path))
        elif entry.is_file():
            yield _listed(Path(entry.path), entry)


class _FileReader:
    """One file, decoded incrementally. Its first bytes are read on opening, to sniff for binary."""

    def __init__(self, source: SourceFile, options: ReadOptions, chunk_bytes: int, progress: Progress | None) -> None:
        self.source = source
        self.options = options
        self.chunk_bytes = chunk_bytes
        self.progress = progress
        try:
            self.file: BinaryIO = source.path.open("rb")
        except OSError as err:
            raise CorpusError(f"cannot read {source.path}: {err.strerror or err}") from None
        try:
            self._check_unchanged()
            self.head = self.file.read(_SNIFF_BYTES)
        except OSError as err:
            raise CorpusError(f"cannot read {source.path}: {err.strerror or err}") from None
        finally:
            if not hasattr(self, "head"):
                self.file.close()
        self.looks_binary = looks_binary(self.head)

    def close(self) -> None:
        self.file.close()

    def _check_unchanged(self, read: int | None = None) -> None:
        stat = os.fstat(self.file.fileno())
        if (stat.st_size, stat.st_mtime_ns) != (self.source.size, self.source.mtime_ns) or read not in (
            None,
            self.source.size,
        ):
            raise CorpusError(
                f"{self.source.path} changed while chargen was reading it (it had {self.source.size:,} bytes, "
                f"now {stat.st_size:,}); run chargen again once nothing is writing to it"
            )

    def _blocks(self) -> Iterator[bytes]:
        """The file's bytes after any BOM, `chunk_bytes` at a time (the sniffed head included)."""
        skip = len(_BOM) if self.head.startswith(_BOM) else 0
        head, step = self.head, self.chunk_bytes
        for start in range(skip, len(head), step):
            yield head[start : start + step]
        if len(head) == _SNIFF_BYTES:
            while block := self.file.read(step):
                yield block

    def chunks(self) -> Iterator[str]:
        """Decoded text, with the BOM dropped and (by default) CRLF and lone CR turned into LF."""
        if not self.options.allow_binary and self.looks_binary:
            self.close()
            raise _binary_error(self.source.path)
        offset = len(_BOM) if self.head.startswith(_BOM) else 0
        try:
            if self.progress is not None and offset:
                self.progress(offset)
            read = yield from _decoded(
                str(self.source.path), self.options, self._blocks(), offset, self._line_at, self.progress
            )
            self._check_unchanged(read)
        except OSError as err:
            raise CorpusError(f"cannot read {self.source.path}: {err.strerror or err}") from None
        finally:
            self.close()

    def _line_at(self, offset: int) -> int:
        """The line of a byte, for an error message: the file is read again up to it."""
        with self.source.path.open("rb") as f:
            return f.read(offset).count(b"\n") + 1


def _binary_error(name: object) -> CorpusError:
    return CorpusError(
        f"{name} looks binary (control bytes in its first {_SNIFF_BYTES} bytes); pass --allow-binary to read it anyway"
    )


def _decoded(
    name: str,
    options: ReadOptions,
    blocks: Iterable[bytes],
    offset: int,
    line_at: Callable[[int], int],
    progress: Progress | None = None,
) -> Generator[str, None, int]:
    """Text of consecutive blocks of a file that start at byte `offset` (after any BOM); returns
    the offset after the last block. A CR ending one block waits, since the next may start with LF."""
    decoder = codecs.getincrementaldecoder("utf-8")(options.errors)
    carry = ""
    for block in blocks:
        text = _decode_block(decoder, block, offset, False, name, line_at)
        offset += len(block)
        if progress is not None:
            progress(len(block))
        text, carry = _newlines(carry + text, options, final=False)
        if text:
            yield text
    text, _ = _newlines(carry + _decode_block(decoder, b"", offset, True, name, line_at), options, final=True)
    if text:
        yield text
    return offset


def _decode_block(
    decoder: codecs.IncrementalDecoder, block: bytes, offset: int, final: bool, name: str, line_at: Callable[[int], int]
) -> str:
    try:
        return decoder.decode(block, final)
    except UnicodeDecodeError as err:
        # err.object is the decoder's held-back bytes followed by `block`.
        at = offset - (len(err.object) - len(block)) + err.start
        raise CorpusError(
            f"{name} is not valid UTF-8 (byte 0x{err.object[err.start]:02x} at offset {at}) on line {line_at(at)}; "
            "convert it to UTF-8 or pass --replace-invalid to replace bad bytes with U+FFFD"
        ) from None


def _newlines(text: str, options: ReadOptions, final: bool) -> tuple[str, str]:
    if not options.normalize_newlines:
        return text, ""
    carry = ""
    if not final and text.endswith("\r"):
        text, carry = text[:-1], "\r"
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text, carry
