"""Read a user's text (a file or a folder of files) strictly, and split it into train and validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chargen.errors import CorpusError

FILE_SEPARATOR = "\n\n"
_SNIFF_BYTES = 8192
# Control bytes that never appear in text; \t \n \v \f \r and ESC are allowed.
_BINARY_BYTES = frozenset(range(32)) - {9, 10, 11, 12, 13, 27}


@dataclass(frozen=True)
class ReadOptions:
    errors: str = "strict"  # "strict" or "replace"
    normalize_newlines: bool = True  # CRLF and lone CR -> LF
    allow_binary: bool = False


def looks_binary(data: bytes) -> bool:
    """NUL or other control bytes in the first few KB: PNG and ELF files decode as UTF-8, so sniff."""
    head = data[:_SNIFF_BYTES]
    if not head:
        return False
    bad = sum(1 for b in head if b in _BINARY_BYTES)
    return b"\x00" in head or bad / len(head) > 0.01


def decode(data: bytes, name: str, options: ReadOptions) -> str:
    if not options.allow_binary and looks_binary(data):
        raise CorpusError(
            f"{name} looks binary (control bytes in its first {_SNIFF_BYTES} bytes); "
            "pass --allow-binary to read it anyway"
        )
    try:
        text = data.decode("utf-8-sig", errors=options.errors)
    except UnicodeDecodeError as err:
        offset = err.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, offset) + 1
        raise CorpusError(
            f"{name} is not valid UTF-8 (byte 0x{data[offset]:02x} at offset {offset}) on line {line}; "
            "convert it to UTF-8 or pass --replace-invalid to replace bad bytes with U+FFFD"
        ) from None
    if options.normalize_newlines:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise CorpusError(f"cannot read {path}: {err.strerror or err}") from None


def folder_files(folder: Path) -> list[Path]:
    """The visible files under `folder`, recursively, in sorted order."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    return files


def read_corpus(path: str | Path, options: ReadOptions = ReadOptions()) -> str:
    """A file's text, or a folder's text files (recursively, sorted) joined by a blank line.

    In a folder, files that look binary are skipped (they are usually images or archives
    sitting next to the text); a single file that looks binary is an error.
    """
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"{path} does not exist; give a text file or a folder of text files")
    if path.is_dir():
        texts = []
        for file in folder_files(path):
            data = _read_bytes(file)
            if not options.allow_binary and looks_binary(data):
                continue
            texts.append(decode(data, str(file), options))
        if not texts:
            raise CorpusError(f"{path} holds no text files; put .txt (UTF-8) files in it")
        text = FILE_SEPARATOR.join(t.rstrip("\n") for t in texts) + "\n"
    else:
        text = decode(_read_bytes(path), str(path), options)
    if not text.strip():
        raise CorpusError(f"{path} is empty (or only whitespace); chargen needs text to learn from")
    return text


def split_validation(text: str, val_frac: float) -> tuple[str, str]:
    """The last `val_frac` of the text, as one contiguous tail (nanoGPT's convention)."""
    cut = int(len(text) * (1 - val_frac))
    return text[:cut], text[cut:]
