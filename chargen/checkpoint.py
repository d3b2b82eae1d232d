"""One self-contained file per model: atomic to write, safe and validated to read.

The file is a `torch.save` zip holding only tensors and plain Python values, read back with
`weights_only=True`, so nothing in it is ever executed. Its zip CRCs are checked on load
(torch itself does not), so a corrupted copy is reported rather than silently loaded.

Language-model checkpoints and classifiers (chargen.classify.store) are two kinds of the same
file: a `FileKind` names the format tag, version and fields, and the same code writes and checks both.
"""

from __future__ import annotations

import contextlib
import glob
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from chargen.atomic import replacing
from chargen.config import ModelConfig, from_dict
from chargen.data.tokenizers import Tokenizer, tokenizer_from_state
from chargen.errors import CheckpointError, ConfigError
from chargen.model import CharLM

VERSION = 1


@dataclass(frozen=True)
class FileKind:
    """One kind of chargen file: its format tag, the newest version this code reads, and the
    fields it must hold (optional ones are type-checked when present)."""

    tag: str
    version: int
    noun: str  # how messages name it: "checkpoint" -> "not a chargen checkpoint"
    required: dict[str, type]
    optional: dict[str, type] = field(default_factory=dict)


CHECKPOINT = FileKind(
    "chargen-checkpoint",
    VERSION,
    "checkpoint",
    required={"model_config": dict, "tokenizer": dict, "model": dict, "metrics": dict},
    optional={"train_config": dict, "corpus": dict, "resume": dict, "history": list},
)


def save_checkpoint(path: str | Path, payload: dict[str, Any], kind: FileKind = CHECKPOINT) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it: a crash at any
    moment leaves either the old file or the new one, never a half-written one."""
    path = Path(path)
    weights = payload["model"]
    if not all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point()):
        raise CheckpointError(f"refusing to save non-finite weights to {path}")
    payload = {"format": kind.tag, "version": kind.version, **payload}
    writing = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as f:
            writing = True
            torch.save(payload, f)
    except BaseException as err:
        disk_error = _os_error(err)
        if disk_error is None:
            raise
        reason = disk_error.strerror or disk_error
        if not writing:
            raise CheckpointError(
                f"cannot write a {kind.noun} in {path.parent}: {reason}; choose another --out"
            ) from None
        raise CheckpointError(
            f"cannot write {kind.noun} {path}: {reason}; the previous {kind.noun} is intact"
        ) from None
    remove_stale_temps(path)


def _os_error(err: BaseException | None) -> OSError | None:
    """The OSError behind `err`. When a write fails inside torch.save, torch's zip writer raises
    its own RuntimeError ("unexpected pos ...") on the way out, with the disk's error as context."""
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


def remove_stale_temps(path: Path) -> None:
    """A save killed mid-write (SIGKILL, power loss) leaves its temporary file behind, as large
    as a checkpoint; the next successful save of the same checkpoint, or the next run writing
    it, removes it. Only this path's own temporary files: another run may be saving beside it."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.{'?' * 8}.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()


def load_checkpoint(path: str | Path, kind: FileKind = CHECKPOINT) -> dict[str, Any]:
    """The validated payload; every way a file can be wrong becomes one CheckpointError line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty: not a chargen {kind.noun}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a chargen {kind.noun} (or it is truncated)")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointError(f"{path} is damaged ({err}); use another copy") from None
    if bad is not None:
        raise CheckpointError(f"{path} is corrupted (checksum mismatch in {bad}); use another copy")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign or hostile files
        # Torch's own wording ("[enforce fail at inline_container.cc:180] ...") means nothing to a user.
        reason = "it is a zip archive that torch.save did not write"
        if "Unsupported global" in str(err) or "weights_only" in str(err):
            reason = "it contains Python objects other than tensors, which chargen refuses to load"
        raise CheckpointError(f"{path} is not a chargen {kind.noun}: {reason}") from None
    found = payload.get("format") if isinstance(payload, dict) else None
    if found != kind.tag:
        if isinstance(found, str) and found.startswith("chargen-"):  # another kind of chargen file
            raise CheckpointError(f"{path} is a chargen {found.removeprefix('chargen-')}, not a chargen {kind.noun}")
        raise CheckpointError(f"{path} is not a chargen {kind.noun} (no chargen format tag)")
    version = payload.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path} has an invalid format version {version!r}: not a chargen {kind.noun}")
    if version > kind.version:
        raise CheckpointError(
            f"{path} has format version {version}; this chargen reads up to version {kind.version}: upgrade chargen"
        )
    missing = [key for key in ("format", "version", *kind.required) if key not in payload]
    if missing:
        raise CheckpointError(f"{path} is missing {', '.join(missing)}: not a complete {kind.noun}")
    _check_schema(path, payload, kind)
    return payload


_RESUME_FIELDS: dict[str, type | tuple[type, ...]] = {
    "optimizer": dict,
    "step": int,
    "epoch": int,
    "offset": int,
    "elapsed": (int, float),
    "best_val_bpc": (int, float),
    "last_val_bpc": (int, float),
    "evals_without_improvement": int,
    "rng": torch.Tensor,
    "hidden": (list, tuple),
}


def _check_schema(path: Path, payload: dict[str, Any], kind: FileKind) -> None:
    """A file from a stranger (or a hand-edited one) fails here, naming the field, rather than
    deep inside the code with an AttributeError."""
    for key, expected in {**kind.required, **kind.optional}.items():
        if key in payload and not isinstance(payload[key], expected):
            found = type(payload[key]).__name__
            raise CheckpointError(f"{path}: field {key!r} should be a {expected.__name__}, not {found}")
    for name, value in payload["model"].items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: model weight {name!r} is a {type(value).__name__}, not a tensor")
    for name, value in payload["metrics"].items():
        if value is not None and not isinstance(value, (int, float)):
            raise CheckpointError(f"{path}: metric {name!r} should be a number, not {type(value).__name__}")
    for record in payload.get("history", []):
        if not isinstance(record, dict) or not all(isinstance(v, (int, float)) for v in record.values()):
            raise CheckpointError(f"{path}: the training history is damaged (each record should hold numbers)")
    if "resume" in payload:
        _check_resume(path, payload["resume"])


def _check_resume(path: Path, resume: dict[str, Any]) -> None:
    missing = [key for key in _RESUME_FIELDS if key not in resume]
    if missing:
        raise CheckpointError(f"{path}: the training state lacks {', '.join(missing)}, so it cannot be resumed")
    for key, kind in _RESUME_FIELDS.items():
        if not isinstance(resume[key], kind):
            found = type(resume[key]).__name__
            raise CheckpointError(f"{path}: the training state's {key!r} has the wrong type ({found})")
    if resume["rng"].dtype != torch.uint8 or not all(isinstance(s, torch.Tensor) for s in resume["hidden"]):
        raise CheckpointError(f"{path}: the training state's random-number or hidden state is damaged")


@dataclass
class LoadedModel:
    model: CharLM
    tokenizer: Tokenizer
    payload: dict[str, Any]


def build_model(payload: dict[str, Any], source: str | Path = "checkpoint") -> LoadedModel:
    """Rebuild model and tokenizer from a payload, checking the weights fit the stated shape."""
    config, tokenizer = read_model_config(payload, source)
    model = CharLM(config)
    load_weights(model, payload["model"], source)
    return LoadedModel(model, tokenizer, payload)


def read_model_config(payload: dict[str, Any], source: str | Path) -> tuple[ModelConfig, Tokenizer]:
    """The network's shape and its tokenizer, checked to agree with each other."""
    try:
        # Checkpoints from before weight drop trained without it (which a resumed run keeps).
        config = from_dict(ModelConfig, {"weight_drop": 0.0, **payload["model_config"]})
        tokenizer = tokenizer_from_state(payload["tokenizer"])
    except CheckpointError as err:
        raise CheckpointError(f"{source}: {err}") from None
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source} has an invalid model_config or tokenizer: {err}") from None
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(
            f"{source}: tokenizer has {tokenizer.vocab_size} ids but the model expects {config.vocab_size}"
        )
    return config, tokenizer


def load_weights(module: nn.Module, weights: dict[str, Any], source: str | Path) -> None:
    """Load a state dict, turning torch's multi-line mismatch report into one line; leaves the module in eval mode."""
    try:
        module.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).splitlines()
        detail = first[1].strip() if len(first) > 1 else (first[0] if first else "")
        raise CheckpointError(f"{source}: weights do not match the model config ({detail})") from None
    module.eval()


def load_model(path: str | Path) -> LoadedModel:
    return build_model(load_checkpoint(path), path)
