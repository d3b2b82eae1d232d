import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from chargen.checkpoint import VERSION, load_checkpoint, load_model, save_checkpoint
from chargen.errors import CheckpointError


def payload_of(path: Path) -> dict:
    return load_checkpoint(path)


def test_round_trip_rebuilds_model_and_tokenizer(tiny_checkpoint: Path) -> None:
    loaded = load_model(tiny_checkpoint)
    assert loaded.model.config.hidden == 32
    assert loaded.tokenizer.decode(loaded.tokenizer.encode("Whan that")) == "Whan that"


def test_save_replaces_atomically_and_leaves_no_temp_files(tiny_checkpoint: Path, tmp_path: Path) -> None:
    payload = payload_of(tiny_checkpoint)
    target = tmp_path / "copy.pt"
    save_checkpoint(target, payload)
    save_checkpoint(target, payload)
    assert [p.name for p in tmp_path.iterdir()] == ["copy.pt"]
    assert load_checkpoint(target)["metrics"] == payload["metrics"]


def test_failed_save_keeps_the_previous_file_byte_identical(tiny_checkpoint: Path, tmp_path: Path) -> None:
    target = tmp_path / "m.pt"
    payload = payload_of(tiny_checkpoint)
    save_checkpoint(target, payload)
    before = target.read_bytes()
    unpicklable = dict(payload, extra=lambda: None)  # torch.save fails part-way through the file
    with pytest.raises(AttributeError):
        save_checkpoint(target, unpicklable)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_non_finite_weights_are_never_saved(tiny_checkpoint: Path, tmp_path: Path) -> None:
    payload = payload_of(tiny_checkpoint)
    payload["model"] = {k: v.clone() for k, v in payload["model"].items()}
    payload["model"]["head.bias"][0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        save_checkpoint(tmp_path / "m.pt", payload)
    assert not (tmp_path / "m.pt").exists()


def test_missing_empty_text_and_truncated_files_are_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.pt").write_text("just some text\n")
    data = tiny_checkpoint.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    cases = {
        "missing.pt": "does not exist",
        "empty.pt": "is empty",
        "notes.pt": "not a chargen checkpoint",
        "cut.pt": "not a chargen checkpoint",
    }
    for name, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(tmp_path / name)


def test_a_flipped_byte_in_the_weights_is_detected(tiny_checkpoint: Path, tmp_path: Path) -> None:
    data = bytearray(tiny_checkpoint.read_bytes())
    with zipfile.ZipFile(tiny_checkpoint) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)  # the largest tensor
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2] ^= 0x40
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(corrupt)


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {Exploit.marker}",))


def test_a_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    Exploit.marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "chargen-checkpoint", "payload": Exploit()}, evil)
    with pytest.raises(CheckpointError, match="refuses to load"):
        load_checkpoint(evil)
    assert not Exploit.marker.exists()
    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="not a chargen checkpoint"):
        load_checkpoint(plain)


def test_future_version_and_missing_keys_are_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    payload = payload_of(tiny_checkpoint)
    torch.save({**payload, "version": VERSION + 1}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match=r"format version 2.*upgrade chargen"):
        load_checkpoint(tmp_path / "future.pt")
    del payload["tokenizer"]
    torch.save(payload, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="missing tokenizer"):
        load_checkpoint(tmp_path / "partial.pt")


def test_weights_that_do_not_fit_the_config_are_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    payload = payload_of(tiny_checkpoint)
    payload["model_config"] = {**payload["model_config"], "hidden": 48}
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="weights do not match the model config"):
        load_model(tmp_path / "mismatch.pt")


def test_a_checkpoint_from_before_weight_drop_trained_without_it(tiny_checkpoint: Path, tmp_path: Path) -> None:
    payload = payload_of(tiny_checkpoint)
    payload["model_config"] = {k: v for k, v in payload["model_config"].items() if k != "weight_drop"}
    torch.save(payload, tmp_path / "older.pt")
    assert load_model(tmp_path / "older.pt").model.config.weight_drop == 0.0
