"""Characters or SentencePiece subwords behind one interface, serialisable into a checkpoint.

Both tokenizers describe every id by the UTF-8 bytes it stands for (`token_bytes`), so decoding,
streaming (where a byte-fallback piece may be half a character) and bits-per-character all work
the same way whatever the tokenizer.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from chargen.config import TokenizerConfig
from chargen.errors import CheckpointError, ConfigError

UNKNOWN = "\ufffd"
_ENCODE_CHUNK = 1 << 20  # characters per vectorised encode step; bounds temporary memory
_SP_SPACE = "\u2581"  # SentencePiece's stand-in for a space
_SP_SEGMENT = 1 << 16  # characters SentencePiece encodes at once when streaming


def compact_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer dtype that holds every id: a corpus costs 1, 2 or 4 bytes a token."""
    if vocab_size <= 256:
        return np.dtype(np.uint8)
    if vocab_size <= 32768:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


class Tokenizer(Protocol):
    kind: str
    vocab_size: int
    dtype: np.dtype
    token_bytes: list[bytes]

    def encode(self, text: str) -> torch.Tensor: ...

    def encode_stream(self, chunks: Iterable[str]) -> Iterator[np.ndarray]: ...

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str: ...

    def state(self) -> dict[str, Any]: ...


def fingerprint(tokenizer: Tokenizer) -> str:
    """Identifies a tokenizer by what it does: equal for equal vocabularies or models."""
    digest = hashlib.sha256(tokenizer.kind.encode())
    for piece in tokenizer.token_bytes:
        digest.update(len(piece).to_bytes(4, "little") + piece)
    if isinstance(tokenizer, SentencePieceTokenizer):
        digest.update(tokenizer.model_proto)
    return digest.hexdigest()


def unwritten_ids(tokenizer: Tokenizer) -> list[int]:
    """Ids no training text contains (the unknown and control tokens): a sampler never draws
    them, else an undertrained model would write U+FFFD or nothing."""
    return [i for i, piece in enumerate(tokenizer.token_bytes) if piece in (UNKNOWN.encode(), b"")]


def token_chars(tokenizer: Tokenizer) -> np.ndarray:
    """Characters each id stands for (its UTF-8 lead bytes): a byte piece carrying the middle of a
    character counts 0, so any run of tokens covers exactly the characters its text has."""
    return np.array([sum((b & 0xC0) != 0x80 for b in piece) for piece in tokenizer.token_bytes], dtype=np.int64)


def _decode_bytes(token_bytes: list[bytes], ids: Sequence[int] | torch.Tensor) -> str:
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    return b"".join(token_bytes[i] for i in ids).decode("utf-8", errors="replace")


class CharTokenizer:
    """One id per Unicode code point seen in the corpus, plus id 0 for anything unseen."""

    kind = "char"

    def __init__(self, chars: str) -> None:
        self.chars = "".join(sorted(set(chars) - {UNKNOWN}))
        self.vocab_size = len(self.chars) + 1
        self.dtype = compact_dtype(self.vocab_size)
        self.token_bytes = [UNKNOWN.encode()] + [c.encode("utf-8", "surrogatepass") for c in self.chars]
        self._table: np.ndarray | None = None

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls("".join(set(text)))

    def _lookup(self) -> np.ndarray:
        """The id of every Unicode code point (0 for those outside the vocabulary): encoding is then
        one gather, several times faster than a search. 1-4 MB, made on first use."""
        if self._table is None:
            self._table = np.zeros(0x110000, dtype=self.dtype)
            self._table[[ord(c) for c in self.chars]] = np.arange(1, self.vocab_size)
        return self._table

    def encode_array(self, text: str) -> np.ndarray:
        table = self._lookup()
        out = np.empty(len(text), dtype=self.dtype)
        for start in range(0, len(text), _ENCODE_CHUNK):
            piece = text[start : start + _ENCODE_CHUNK]
            codepoints = np.frombuffer(piece.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            out[start : start + len(piece)] = table[codepoints]
        return out

    def encode(self, text: str) -> torch.Tensor:
        return torch.from_numpy(self.encode_array(text))

    def encode_stream(self, chunks: Iterable[str]) -> Iterator[np.ndarray]:
        return map(self.encode_array, chunks)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        return _decode_bytes(self.token_bytes, ids)

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": self.chars}

    def covers(self, text: str) -> str:
        """The characters of `text` this vocabulary lacks (for fine-tuning checks)."""
        return "".join(sorted(set(text) - set(self.chars)))


def _segments(chunks: Iterable[str], limit: int) -> Iterator[str]:
    """Runs of whole lines up to `limit` characters (a longer line is cut every `limit`). They
    depend on the text alone, not on how it arrives in chunks, so neither do the ids of a subword
    model, whose segmentation of a text is not the concatenation of its lines' segmentations."""
    buffer = ""
    for chunk in chunks:
        buffer += chunk
        start = 0
        while len(buffer) - start >= limit:
            newline = buffer.rfind("\n", start, start + limit)
            end = newline + 1 if newline >= 0 else start + limit
            yield buffer[start:end]
            start = end
        buffer = buffer[start:]
    if buffer:
        yield buffer


def _training_chunks(text: str, max_chars: int = 1000) -> Iterator[str]:
    """Runs of whole lines under ~4 KB: SentencePiece silently skips longer 'sentences'."""
    buffer: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        while len(line) > max_chars:
            yield line[:max_chars]
            line = line[max_chars:]
        if buffer and size + len(line) > max_chars:
            yield "".join(buffer)
            buffer, size = [], 0
        buffer.append(line)
        size += len(line)
    if buffer:
        yield "".join(buffer)


class SentencePieceTokenizer:
    """Subwords trained on the corpus; byte fallback makes every string encodable."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self.model_proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self._sp.get_piece_size()
        self.dtype = compact_dtype(self.vocab_size)
        self.token_bytes = [self._piece_bytes(i) for i in range(self.vocab_size)]
        # A literal U+2581 would decode as a space; we encode it as its three UTF-8 bytes.
        self._space_mark_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _SP_SPACE.encode()]

    def _piece_bytes(self, i: int) -> bytes:
        sp = self._sp
        if sp.is_byte(i):
            return bytes([int(sp.id_to_piece(i)[3:5], 16)])
        if sp.is_unknown(i):
            return UNKNOWN.encode()
        if sp.is_control(i):
            return b""
        return sp.id_to_piece(i).replace(_SP_SPACE, " ").encode("utf-8", "surrogatepass")

    @classmethod
    def train(cls, text: str, config: TokenizerConfig) -> SentencePieceTokenizer:
        import sentencepiece as spm

        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_training_chunks(text),
                model_writer=model,
                vocab_size=config.vocab_size,
                model_type=config.model_type,
                byte_fallback=True,
                normalization_rule_name="identity",
                add_dummy_prefix=False,
                remove_extra_whitespaces=False,
                allow_whitespace_only_pieces=True,
                user_defined_symbols=["\n"],
                character_coverage=0.9995,
                bos_id=-1,
                eos_id=-1,
                unk_id=0,
                num_threads=1,  # deterministic for a given corpus
                minloglevel=2,
            )
        except RuntimeError as err:
            raise _vocab_size_error(str(err), config.vocab_size) from None
        return cls(model.getvalue())

    def encode_array(self, text: str) -> np.ndarray:
        ids: list[int] = []
        for n, part in enumerate(text.split(_SP_SPACE)):
            if n:
                ids.extend(self._space_mark_ids)
            if part:
                ids.extend(self._sp.encode(part))
        return np.array(ids, dtype=self.dtype)

    def encode(self, text: str) -> torch.Tensor:
        return torch.from_numpy(self.encode_array(text))

    def encode_stream(self, chunks: Iterable[str]) -> Iterator[np.ndarray]:
        return map(self.encode_array, _segments(chunks, _SP_SEGMENT))

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        return _decode_bytes(self.token_bytes, ids)

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": torch.frombuffer(bytearray(self.model_proto), dtype=torch.uint8)}


def _vocab_size_error(message: str, asked: int) -> ConfigError:
    if "Please set it to a value <=" in message:
        limit = message.rsplit("<=", 1)[1].strip(" .")
        return ConfigError(f"--vocab-size {asked} is too large for this corpus; use at most {limit}")
    if "smaller than required_chars" in message:
        needed = message.split(" vs ")[1].split(".")[0] if " vs " in message else "more"
        return ConfigError(
            f"--vocab-size {asked} is too small for this corpus; use at least {needed}"
            " (256 byte pieces plus the corpus's characters)"
        )
    return ConfigError(f"SentencePiece could not train on this corpus: {message.splitlines()[-1]}")


def train_tokenizer(text: str, config: TokenizerConfig) -> Tokenizer:
    if config.kind == "char":
        return CharTokenizer.train(text)
    return SentencePieceTokenizer.train(text, config)


def tokenizer_from_state(state: dict[str, Any]) -> Tokenizer:
    kind = state.get("kind")
    if kind == "char":
        if not isinstance(state.get("chars"), str):
            raise CheckpointError("the checkpoint's character tokenizer has no character list")
        return CharTokenizer(state["chars"])
    if kind == "sentencepiece":
        model = state.get("model")
        if not isinstance(model, torch.Tensor) or model.dtype != torch.uint8:
            raise CheckpointError("the checkpoint's SentencePiece tokenizer has no model")
        try:
            return SentencePieceTokenizer(bytes(model.tolist()))
        except RuntimeError:  # sentencepiece's own message is a C++ source location
            raise CheckpointError("the checkpoint's SentencePiece model is damaged") from None
    raise CheckpointError(f"unknown tokenizer kind {kind!r} in the checkpoint")
