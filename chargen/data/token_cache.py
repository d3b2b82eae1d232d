"""Encoded corpora on disk: written once, then memory-mapped by every later run on the same text
and tokenizer (and by every --resume), so that starting costs seconds at any corpus size and the
ids cost page cache, not process memory.

The files live in `$CHARGEN_HOME/cache` (see chargen.paths), one per corpus path, read options,
validation split and tokenizer; `chargen cache list` shows them and `chargen cache clear` removes
them. A file is trusted only when its header, size and data checksum are intact and the corpus
still has the sizes and times it had when the file was built; anything else is rebuilt.

Layout: MAGIC | version (u32) | header size H (u32) | SHA-256 of the header | header (JSON,
space-padded to H bytes) | ids (`length` of `dtype`, little-endian, 64-byte aligned).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
import torch

from chargen.atomic import replacing
from chargen.data.scan import CorpusFacts
from chargen.data.tokenizers import Tokenizer, tokenizer_from_state
from chargen.errors import CacheError
from chargen.paths import user_data_dir

MAGIC = b"chargen tokens\r\n"
VERSION = 1
SUFFIX = ".tokens"
_PREFIX = struct.Struct("<16sII32s")
_ALIGN = 64
_READ_BLOCK = 1 << 23


class Damaged(Exception):
    """A cache file that must not be used; the message says why."""


def cache_dir() -> Path:
    return user_data_dir() / "cache"


@dataclass
class TokenFile:
    """A cache file, its header checked; `ids` maps its data (copy-on-write, never written)."""

    path: Path
    header: dict[str, Any]

    @property
    def facts(self) -> CorpusFacts:
        return CorpusFacts(**self.header["facts"])

    @property
    def cut_tokens(self) -> int:
        return self.header["cut_tokens"]

    def tokenizer(self) -> Tokenizer:
        state = dict(self.header["tokenizer"])
        if "model" in state:
            state["model"] = torch.frombuffer(bytearray(base64.b64decode(state["model"])), dtype=torch.uint8)
        return tokenizer_from_state(state)

    def ids(self) -> torch.Tensor:
        length, dtype = self.header["length"], np.dtype(self.header["dtype"])
        if length == 0:
            return torch.from_numpy(np.empty(0, dtype=dtype))
        mapped = np.memmap(self.path, dtype=dtype, mode="c", offset=self.header["data_offset"], shape=(length,))
        return torch.from_numpy(mapped)

    def verify(self) -> None:
        """Read the data once through a small buffer (the page cache, not this process, holds it)."""
        crc = 0
        try:
            with self.path.open("rb") as f:
                f.seek(self.header["data_offset"])
                while block := f.read(_READ_BLOCK):
                    crc = zlib.crc32(block, crc)
        except OSError as err:
            raise Damaged(f"it cannot be read: {err.strerror or err}") from None
        if crc != self.header["crc32"]:
            raise Damaged("its data does not match its checksum")


def tokenizer_header(tokenizer: Tokenizer) -> dict[str, Any]:
    """The tokenizer's state as JSON: a file (and `cache list`) can rebuild or describe it."""
    state = dict(tokenizer.state())
    if isinstance(state.get("model"), torch.Tensor):
        state["model"] = base64.b64encode(state["model"].numpy().tobytes()).decode()
    return state


def read_header(path: Path) -> TokenFile:
    """The file's header, checked against its own checksum and the file's size."""
    try:
        with path.open("rb") as f:
            prefix = f.read(_PREFIX.size)
            if len(prefix) < _PREFIX.size or not prefix.startswith(MAGIC):
                raise Damaged("it is not a chargen token file (or it is truncated)")
            _, version, size, digest = _PREFIX.unpack(prefix)
            if version != VERSION:
                raise Damaged(f"it has format version {version}, this chargen writes {VERSION}")
            raw = f.read(size)
            file_size = os.fstat(f.fileno()).st_size
    except OSError as err:
        raise Damaged(f"it cannot be read: {err.strerror or err}") from None
    if len(raw) < size or sha256(raw).digest() != digest:
        raise Damaged("its header is damaged")
    try:
        header = json.loads(raw)
        expected = header["data_offset"] + header["length"] * np.dtype(header["dtype"]).itemsize
    except (ValueError, KeyError, TypeError) as err:  # a file written by a buggy or foreign writer
        raise Damaged(f"its header is not what chargen writes ({err})") from None
    if file_size != expected:
        raise Damaged(f"it has {file_size:,} bytes where its header says {expected:,}")
    return TokenFile(path, header)


def write(path: Path, header: dict[str, Any], parts: Iterable[Iterable[np.ndarray]], dtype: np.dtype) -> TokenFile:
    """Write the ids of each part in turn (a text's two sides of its cut) atomically: a full disk
    or a kill leaves no file that a later run would trust. Records where the first part ends."""
    header = {**header, "dtype": dtype.str, "created": time.time()}
    # The counts are only known at the end: reserve room for the largest they could be.
    room = len(_encode({**header, "length": 2**63, "cut_tokens": 2**63, "crc32": 2**32, "data_offset": 2**63}))
    size = -(-(_PREFIX.size + room) // _ALIGN) * _ALIGN - _PREFIX.size
    header["data_offset"] = _PREFIX.size + size
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as f:
            f.seek(header["data_offset"])
            crc, length, cut = 0, 0, None
            for part in parts:
                for ids in part:
                    data = np.ascontiguousarray(ids, dtype=dtype.newbyteorder("<")).tobytes()
                    f.write(data)
                    crc = zlib.crc32(data, crc)
                    length += len(ids)
                cut = length if cut is None else cut
            header.update(length=length, cut_tokens=cut or 0, crc32=crc)
            raw = _encode(header).ljust(size, b" ")
            f.seek(0)
            f.write(_PREFIX.pack(MAGIC, VERSION, size, sha256(raw).digest()) + raw)
    except OSError as err:
        raise CacheError(
            f"cannot write the token cache in {path.parent}: {err.strerror or err}; free some space "
            "(chargen cache clear) or set CHARGEN_HOME to a writable folder with room"
        ) from None
    return TokenFile(path, header)


def _encode(header: dict[str, Any]) -> bytes:
    return json.dumps(header, sort_keys=True).encode()


def entries(folder: Path, key: str = "") -> list[Path]:
    return sorted(folder.glob(f"{key}*{SUFFIX}"))


def remove_temps(folder: Path, key: str) -> None:
    """Temporary files left by a build that was killed (the caller holds the key's lock, so no
    live build of this key owns them)."""
    for stale in folder.glob(f".{key}-*{SUFFIX}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


@contextlib.contextmanager
def locked(folder: Path, key: str) -> Iterator[None]:
    """One process at a time builds a key's files; the others wait, then find them built. Where
    the folder cannot be written, reading a cache built earlier still works without the lock."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks
        yield
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / f".{key}.lock", "a+b")  # noqa: SIM115 (held for the block)
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@dataclass(frozen=True)
class Listing:
    path: Path
    bytes: int
    header: dict[str, Any] | None  # None when damaged
    problem: str


def listing(folder: Path) -> list[Listing]:
    found = []
    for path in entries(folder):
        try:
            found.append(Listing(path, path.stat().st_size, read_header(path).header, ""))
        except Damaged as err:
            found.append(Listing(path, path.stat().st_size, None, str(err)))
    return found


def clear(folder: Path) -> tuple[int, int]:
    """Remove every cache file and leftover temporary file; (files, bytes) removed."""
    count = freed = 0
    for path in [*entries(folder), *folder.glob(f".*{SUFFIX}.*.tmp")]:
        with contextlib.suppress(OSError):
            size = path.stat().st_size
            path.unlink()
            count, freed = count + 1, freed + size
    return count, freed
