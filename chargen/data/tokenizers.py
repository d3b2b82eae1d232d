"""Characters or SentencePiece subwords behind one interface, serialisable into a checkpoint.

Both tokenizers describe every id by the UTF-8 bytes it stands for (`token_bytes`), so decoding,
streaming (where a byte-fallback piece may be half a character) and bits-per-character all work
the same way whatever the tokenizer.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch

from chargen.config import TokenizerConfig
from chargen.errors import CheckpointError, ConfigError

UNKNOWN = "\ufffd"
_ENCODE_CHUNK = 1 << 22  # characters per vectorised encode step; bounds temporary memory
_SP_SPACE = "\u2581"  # SentencePiece's stand-in for a space


def compact_dtype(vocab_size: int) -> torch.dtype:
    """The smallest integer dtype that holds every id: a corpus costs 1, 2 or 4 bytes a token."""
    if vocab_size <= 256:
        return torch.uint8
    if vocab_size <= 32768:
        return torch.int16
    return torch.int32


class Tokenizer(Protocol):
    kind: str
    vocab_size: int
    token_bytes: list[bytes]

    def encode(self, text: str) -> torch.Tensor: ...

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str: ...

    def state(self) -> dict[str, Any]: ...


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
        self._codepoints = torch.tensor([ord(c) for c in self.chars], dtype=torch.int32)
        self.token_bytes = [UNKNOWN.encode()] + [c.encode("utf-8", "surrogatepass") for c in self.chars]

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls("".join(set(text)))

    def encode(self, text: str) -> torch.Tensor:
        if not self.chars:  # an empty vocabulary: everything is unknown (and searchsorted has nothing to index)
            return torch.zeros(len(text), dtype=self.dtype)
        out = torch.empty(len(text), dtype=self.dtype)
        last = len(self.chars) - 1
        for start in range(0, len(text), _ENCODE_CHUNK):
            piece = text[start : start + _ENCODE_CHUNK]
            raw = bytearray(piece.encode("utf-32-le", "surrogatepass"))
            codepoints = torch.frombuffer(raw, dtype=torch.int32)
            index = torch.searchsorted(self._codepoints, codepoints).clamp_(max=max(last, 0))
            known = self._codepoints[index] == codepoints
            out[start : start + len(piece)] = torch.where(known, index + 1, 0)
        return out

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        return _decode_bytes(self.token_bytes, ids)

    def state(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": self.chars}

    def covers(self, text: str) -> str:
        """The characters of `text` this vocabulary lacks (for fine-tuning checks)."""
        return "".join(sorted(set(text) - set(self.chars)))


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

    def encode(self, text: str) -> torch.Tensor:
        ids: list[int] = []
        for n, part in enumerate(text.split(_SP_SPACE)):
            if n:
                ids.extend(self._space_mark_ids)
            if part:
                ids.extend(self._sp.encode(part))
        return torch.tensor(ids, dtype=self.dtype)

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
