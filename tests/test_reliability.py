"""The bad-input matrix (../shared/RELIABILITY.md), one named test per case, through the real
`chargen` entry point run in-process (cli.main: argv in, one `Error:` line and an exit code out).

Each test asserts what the user sees (exit code, the one line on stderr, no traceback) and that
nothing was lost or left behind. Rows already covered elsewhere are referenced, not repeated:
- exact resume through Ctrl-C: test_train::test_interrupted_then_resumed_run_equals_a_straight_run
- resume with another batch size or corpus (API): test_train::test_resume_refuses_a_changed_*
- non-finite steps skipped and counted: test_train::test_nonfinite_losses_are_skipped_then_stop_the_run
- a failed save keeps the previous file: test_checkpoint::test_failed_save_keeps_the_previous_file_byte_identical
- SentencePiece round trips: test_tokenizers, test_properties
- SIGKILL, full disk, read-only folder, Ctrl-C twice: test_faults
- the REPL rows: test_repl; the sampling rows: test_reliability_sampling
"""

from __future__ import annotations

import math
import pickle
import random
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

import chargen.data.tokenizers
from chargen.checkpoint import load_checkpoint, load_model, save_checkpoint
from chargen.config import SampleConfig, TokenizerConfig
from chargen.data.corpus import ReadOptions, read_corpus
from chargen.errors import CorpusError
from chargen.generation.sampler import Sampler
from chargen.model import CharLM
from chargen.training.run import TrainRequest, prepare
from tests.helpers import ENGLISH, FAST, Recorder, assert_clear_error, run_cli, start


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def write(path: Path, data: bytes | str) -> Path:
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current folder, so runs without --out write to ./checkpoints here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    return lambda *args: run_cli(capsys, monkeypatch, *args)


# --- Corpus ----------------------------------------------------------------------------------


def test_corpus_missing_path_is_named_and_nothing_is_left_behind(cli, workdir: Path) -> None:
    assert_clear_error(cli("train", "diary.txt", *FAST), "diary.txt does not exist")
    assert files_in(workdir) == set()


def test_corpus_folder_without_text_files_is_named(cli, workdir: Path) -> None:
    (workdir / "photos").mkdir()
    write(workdir / "photos" / "cat.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20)
    assert_clear_error(cli("train", "photos", *FAST, "--max-steps", "1"), "photos holds no text files")
    assert files_in(workdir) == {"photos", "photos/cat.png"}


@pytest.mark.parametrize("inside_a_folder", [False, True], ids=["file", "file-in-folder"])
def test_corpus_unreadable_file_is_named(
    cli, workdir: Path, monkeypatch: pytest.MonkeyPatch, inside_a_folder: bool
) -> None:
    # Root reads anything whatever its mode bits, so the refusal comes from the read itself.
    (workdir / "texts").mkdir()
    locked = write(workdir / "texts" / "locked.txt", ENGLISH)
    real_open = Path.open

    def open_file(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_file)
    corpus = locked.parent if inside_a_folder else locked
    assert_clear_error(
        cli("train", corpus, *FAST, "--max-steps", "1"), "cannot read ", "texts/locked.txt: Permission denied"
    )
    assert files_in(workdir) == {"texts", "texts/locked.txt"}


@pytest.mark.parametrize("content", [b"", b" \n\t\r\n  \n"], ids=["empty", "whitespace"])
def test_corpus_empty_or_blank_fails_before_any_model_is_built(
    cli, workdir: Path, monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a tokenizer or model was built for an empty corpus")

    monkeypatch.setattr("chargen.data.tokenized.train_tokenizer", never)
    monkeypatch.setattr("chargen.data.tokenized.CharTokenizer", never)
    monkeypatch.setattr("chargen.training.start.CharLM", never)
    write(workdir / "blank.txt", content)
    assert_clear_error(cli("train", "blank.txt", *FAST, "--max-steps", "1"), "blank.txt is empty (or only whitespace)")
    assert files_in(workdir) == {"blank.txt"}


@pytest.mark.parametrize("text", ["x", "hello world\n"], ids=["one-character", "one-line"])
def test_corpus_too_short_gives_a_minimum_that_works(cli, workdir: Path, text: str) -> None:
    write(workdir / "short.txt", text)
    outcome = cli("train", "short.txt", *FAST, "--max-steps", "1")
    line = assert_clear_error(outcome, "the corpus is too small", "--seq-len 16")
    minimum = int(re.search(r"needs at least (\d+) characters", line).group(1))
    assert files_in(workdir) == {"short.txt"}
    write(workdir / "short.txt", (text.strip() * minimum)[:minimum])
    assert cli("train", "short.txt", *FAST, "--max-steps", "1", "--quiet").code == 0


def test_corpus_short_for_the_batch_lowers_it_with_a_visible_warning(cli, workdir: Path) -> None:
    write(workdir / "small.txt", "abcdefghij" * 20)  # 180 training characters: 11 streams of 16
    outcome = cli("train", "small.txt", *FAST, "--batch-size", "64", "--max-steps", "2")
    assert outcome.code == 0, outcome.stderr
    assert "batch size lowered from 64 to 11" in " ".join(outcome.stdout.split())
    assert load_checkpoint(workdir / "checkpoints" / "small.last.pt")["train_config"]["batch_size"] == 11


def test_corpus_invalid_utf8_gives_the_byte_offset_and_the_flag(cli, workdir: Path) -> None:
    latin1 = write(workdir / "latin1.txt", ("Ça ira, café crème. " * 40).encode("latin-1"))
    assert_clear_error(
        cli("train", latin1, *FAST, "--max-steps", "1"),
        "latin1.txt is not valid UTF-8 (byte 0xc7 at offset 0)",
        "--replace-invalid",
    )
    assert files_in(workdir) == {"latin1.txt"}
    outcome = cli("train", latin1, *FAST, "--replace-invalid", "--max-steps", "1", "--quiet")
    assert outcome.code == 0, outcome.stderr


def test_corpus_replacing_invalid_bytes_never_drops_one(tmp_path: Path) -> None:
    data = "Ça ira, café crème.\n".encode("latin-1")  # three bytes that are not UTF-8
    text = read_corpus(write(tmp_path / "l.txt", data), ReadOptions(errors="replace"))
    assert text.count("\ufffd") == 3 and len(text) == len(data)


def test_corpus_invalid_utf8_offset_counts_the_bom_and_names_the_file_in_a_folder(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", ENGLISH)
    write(tmp_path / "b.txt", b"\xef\xbb\xbfcaf\xe9\n")
    with pytest.raises(CorpusError, match=r"b\.txt is not valid UTF-8 \(byte 0xe9 at offset 6\)"):
        read_corpus(tmp_path)


def test_corpus_binary_file_is_refused_unless_forced(cli, workdir: Path) -> None:
    # An ELF made of NUL and ASCII bytes decodes as UTF-8: only the sniff catches it.
    elf = write(workdir / "program", b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00" + b"main printf puts\n" * 60)
    assert_clear_error(cli("train", elf, *FAST, "--max-steps", "1"), "program looks binary", "--allow-binary")
    assert files_in(workdir) == {"program"}
    assert cli("train", elf, *FAST, "--allow-binary", "--max-steps", "1", "--quiet").code == 0


@pytest.mark.parametrize("command", ["eval", "report"])
def test_a_binary_text_to_read_is_refused_with_advice_the_command_takes(
    cli, workdir: Path, tiny_checkpoint: Path, command: str
) -> None:
    elf = write(workdir / "program", b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00" + b"main printf puts\n" * 60)
    assert_clear_error(cli(command, tiny_checkpoint, elf), "program looks binary", "--allow-binary")
    assert cli(command, tiny_checkpoint, elf, "--allow-binary").code == 0


def test_corpus_bom_is_stripped_and_line_endings_become_lf_unless_kept(cli, workdir: Path) -> None:
    write(workdir / "dos.txt", b"\xef\xbb\xbf" + b"first line\r\nsecond line\rthird\r\n" * 30)

    def vocabulary(*flags: str) -> str:
        out = workdir / f"m{len(flags)}.pt"
        assert cli("train", "dos.txt", *FAST, "--max-steps", "1", "--quiet", "--out", out, *flags).code == 0
        return load_model(out).tokenizer.chars

    normalised, kept = vocabulary(), vocabulary("--keep-crlf")
    assert "\ufeff" not in normalised and "\r" not in normalised and "\n" in normalised
    assert "\ufeff" not in kept and "\r" in kept


def _peak_rss_bytes() -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024


def test_corpus_large_file_costs_a_byte_a_character_not_a_python_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Measured with a small encoding chunk, so what shows is the cost per character
    # (a list of ints would cost 8+ bytes each, and as many again as an int64 tensor).
    monkeypatch.setattr(chargen.data.tokenizers, "_ENCODE_CHUNK", 1 << 16)
    path = write(tmp_path / "big.txt", ENGLISH * 9000)  # ~4 MB
    text = read_corpus(path)
    tokenizer = chargen.data.tokenizers.CharTokenizer.train(text)
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak-memory count (Linux)
    before = _peak_rss_bytes()
    ids = tokenizer.encode(text)
    assert ids.dtype == torch.uint8 and len(ids) == len(text)
    assert _peak_rss_bytes() - before < 3 * len(text)


def test_sentencepiece_trains_on_lines_longer_than_its_limit(tmp_path: Path) -> None:
    # One 60 KB line: SentencePiece's trainer would skip it whole (over 4192 bytes) and then
    # fail with an empty corpus; chargen feeds it in chunks.
    rng = random.Random(0)
    line = " ".join(rng.choice(ENGLISH.split()) for _ in range(10_000))
    tokenizer = chargen.data.tokenizers.train_tokenizer(line, TokenizerConfig(kind="sentencepiece", vocab_size=350))
    assert tokenizer.decode(tokenizer.encode(line)) == line
    assert len(tokenizer.encode(line)) < len(line) / 2  # it learned subwords from the long line


@pytest.mark.parametrize(
    ("vocab_size", "message"),
    [("5000", r"--vocab-size 5000 is too large for this corpus; use at most \d+"), ("50", r"use at least \d+")],
    ids=["too-large", "too-small"],
)
def test_sentencepiece_vocabulary_size_out_of_range_quotes_the_allowed_size(
    cli, workdir: Path, corpus_file: Path, vocab_size: str, message: str
) -> None:
    outcome = cli(
        "train",
        corpus_file,
        *FAST,
        "--max-steps",
        "1",
        "--tokenizer",
        "sentencepiece",
        "--vocab-size",
        vocab_size,
    )
    assert re.search(message, assert_clear_error(outcome))
    assert files_in(workdir) == set()


def test_thousands_of_characters_and_unseen_ones_never_raise(cli, workdir: Path, corpus_file: Path) -> None:
    rng = random.Random(1)
    alphabet = [chr(0x4E00 + i) for i in range(3000)]
    text = "".join(rng.choice(alphabet) + ("\n" if i % 40 == 39 else "") for i in range(12_000))
    write(workdir / "zh.txt", text)
    train_text = text[: int(len(text) * 0.9)]
    unseen = set(text[len(train_text) :]) - set(train_text)
    assert unseen  # the validation tail holds characters training never saw, as real Chinese does
    assert cli("train", "zh.txt", *FAST, "--max-steps", "2", "--quiet", "--out", "zh.pt").code == 0
    loaded = load_model(workdir / "zh.pt")
    assert loaded.tokenizer.vocab_size > 2500 and loaded.tokenizer.encode("".join(unseen)).eq(0).all()
    write(workdir / "other.txt", "".join(sorted(unseen)) * 3 + "\n")
    assert cli("eval", "zh.pt", "other.txt").code == 0
    prime = "".join(sorted(unseen))[:5] + "ñ"
    assert len(Sampler(loaded.model, loaded.tokenizer).generate([prime], SampleConfig(length=5, seed=1))[0]) == 5


# --- Checkpoints -----------------------------------------------------------------------------


def _flip_a_weight_byte(data: bytes, source: Path) -> bytes:
    with zipfile.ZipFile(source) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    flipped = bytearray(data)
    flipped[info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2] ^= 0x40
    return bytes(flipped)


def _foreign_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not a model")


UNREADABLE = {
    "missing": (None, "does not exist"),
    "empty": (lambda data, src, p: p.write_bytes(b""), "is empty: not a chargen checkpoint"),
    "truncated-early": (
        lambda data, src, p: p.write_bytes(data[:100]),
        "not a chargen checkpoint (or it is truncated)",
    ),
    "truncated-half": (lambda data, src, p: p.write_bytes(data[: len(data) // 2]), "(or it is truncated)"),
    "truncated-last-byte": (lambda data, src, p: p.write_bytes(data[:-1]), "(or it is truncated)"),
    "text-renamed": (lambda data, src, p: p.write_text("my notes\n"), "not a chargen checkpoint"),
    "plain-pickle": (lambda data, src, p: p.write_bytes(pickle.dumps({"a": 1})), "not a chargen checkpoint"),
    "foreign-zip": (lambda data, src, p: _foreign_zip(p), "zip archive that torch.save did not write"),
    "flipped-byte": (lambda data, src, p: p.write_bytes(_flip_a_weight_byte(data, src)), "checksum mismatch"),
}


@pytest.mark.parametrize("command", ["info", "eval"])
@pytest.mark.parametrize("case", list(UNREADABLE))
def test_checkpoint_that_is_not_one_gives_one_line(
    cli, tmp_path: Path, tiny_checkpoint: Path, corpus_file: Path, case: str, command: str
) -> None:
    make, message = UNREADABLE[case]
    path = tmp_path / f"{case}.pt"
    if make is not None:
        make(tiny_checkpoint.read_bytes(), tiny_checkpoint, path)
    args = [command, path] + ([corpus_file] if command == "eval" else [])
    assert_clear_error(cli(*args), path.name, message)


class Exploit:
    """Unpickling this runs `touch marker`: the test checks the file never appears."""

    marker: Path

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (f"touch {Exploit.marker}",))


@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
@pytest.mark.parametrize("command", ["info", "eval", "init-from", "resume"])
def test_checkpoint_malicious_pickle_is_refused_and_never_runs(
    cli, tmp_path: Path, corpus_file: Path, command: str, container: str
) -> None:
    Exploit.marker = tmp_path / "pwned"
    evil = tmp_path / "evil.last.pt" if command == "resume" else tmp_path / "evil.pt"
    payload = {"format": "chargen-checkpoint", "version": 1, "model": Exploit()}
    if container == "torch-zip":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload))
    args = {
        "info": ["info", evil],
        "eval": ["eval", evil, corpus_file],
        "init-from": ["train", corpus_file, "--init-from", evil, "--out", tmp_path / "f.pt", "--max-steps", "1"],
        "resume": ["train", corpus_file, "--resume", "--out", tmp_path / "evil.pt", "--max-steps", "1"],
    }[command]
    assert_clear_error(cli(*args), "evil", "not a chargen checkpoint")
    assert not Exploit.marker.exists()


def _resumable(tiny_checkpoint: Path, folder: Path) -> Path:
    """A copy of the session's tiny run (best and last) that a test may break."""
    out = folder / "run.pt"
    shutil.copy(tiny_checkpoint, out)
    shutil.copy(tiny_checkpoint.with_name("tiny.last.pt"), folder / "run.last.pt")
    return out


def _break_optimizer(payload: dict[str, Any]) -> None:
    state = payload["resume"]["optimizer"]["state"]
    first = next(iter(state))
    state[first]["exp_avg"] = torch.zeros(3)


FIELD_DAMAGE = {
    "format-tag": (lambda p: p.update(format="someone-elses-format"), "no chargen format tag"),
    "future-version": (lambda p: p.update(version=2), "format version 2; this chargen reads up to version 1"),
    "version-not-a-number": (lambda p: p.update(version="1"), "invalid format version '1'"),
    "missing-model_config": (lambda p: p.pop("model_config"), "is missing model_config"),
    "missing-tokenizer": (lambda p: p.pop("tokenizer"), "is missing tokenizer"),
    "missing-model": (lambda p: p.pop("model"), "is missing model"),
    "missing-metrics": (lambda p: p.pop("metrics"), "is missing metrics"),
    "model_config-not-a-dict": (lambda p: p.update(model_config="2x512"), "field 'model_config' should be a dict"),
    "metrics-not-numbers": (lambda p: p["metrics"].update(step="sixty"), "metric 'step' should be a number"),
    "weight-not-a-tensor": (lambda p: p["model"].update({"head.bias": [0.0]}), "'head.bias' is a list"),
    "weights-wrong-shape": (
        lambda p: p["model_config"].update(hidden=48),
        "weights do not match the model config (size mismatch",
    ),
    "vocabulary-wrong-size": (
        lambda p: p["tokenizer"].update(chars=p["tokenizer"]["chars"][:-1]),
        "model expects",
    ),
    "tokenizer-damaged": (
        lambda p: p.update(tokenizer={"kind": "sentencepiece", "model": torch.zeros(9, dtype=torch.uint8)}),
        "SentencePiece model is damaged",
    ),
    "training-state-incomplete": (lambda p: p["resume"].pop("rng"), "the training state lacks rng"),
    "hidden-state-wrong-shape": (
        lambda p: p["resume"].update(hidden=[torch.zeros(1, 3, 32), torch.zeros(1, 3, 32)]),
        "hidden state does not fit",
    ),
    "optimizer-state-wrong-shape": (_break_optimizer, "optimizer state does not fit"),
}


@pytest.mark.parametrize("case", list(FIELD_DAMAGE))
def test_checkpoint_wrong_or_missing_field_is_named(
    cli, tmp_path: Path, tiny_checkpoint: Path, corpus_file: Path, case: str
) -> None:
    damage, message = FIELD_DAMAGE[case]
    out = _resumable(tiny_checkpoint, tmp_path)
    last = out.with_name("run.last.pt")
    payload = torch.load(last, weights_only=True)
    damage(payload)
    torch.save(payload, last)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    outcome = cli("train", corpus_file, "--resume", "--out", out, "--max-steps", "70", "--quiet")
    assert_clear_error(outcome, "run.last.pt", message)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_checkpoint_temporary_file_left_by_a_killed_save_is_cleaned_up(tiny_checkpoint: Path, tmp_path: Path) -> None:
    target = tmp_path / "m.pt"
    stale = tmp_path / ".m.pt.k1ll3d00.tmp"  # as tempfile.mkstemp names them
    stale.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    neighbour = tmp_path / ".other.pt.abcdefgh.tmp"  # another checkpoint's save: not ours to remove
    neighbour.write_bytes(b"...")
    save_checkpoint(target, load_checkpoint(tiny_checkpoint))
    assert files_in(tmp_path) == {"m.pt", neighbour.name}


# --- Training --------------------------------------------------------------------------------


class PowerCut(Exception):
    pass


class CrashAfterEval(Recorder):
    """Dies right after the evaluation (and its saves) at `step`, like a machine losing power."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.crash_step = step

    def on_eval(self, event: Any) -> None:
        super().on_eval(event)
        if event.step == self.crash_step:
            raise PowerCut


def test_resume_from_a_regular_checkpoint_after_a_crash_equals_a_straight_run(
    corpus_file: Path, tmp_path: Path
) -> None:
    straight = Recorder()
    start(corpus_file, tmp_path / "a.pt", straight).run()
    first = CrashAfterEval(step=20)
    with pytest.raises(PowerCut):
        start(corpus_file, tmp_path / "b.pt", first).run()
    second = Recorder()
    start(corpus_file, tmp_path / "b.pt", second, resume=True).run()
    assert first.losses + second.losses == straight.losses
    a, b = load_checkpoint(tmp_path / "a.last.pt"), load_checkpoint(tmp_path / "b.last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["resume"]["rng"], b["resume"]["rng"])


@pytest.fixture(scope="module")
def sentencepiece_run(tmp_path_factory: pytest.TempPathFactory, corpus_file: Path) -> Path:
    out = tmp_path_factory.mktemp("sp") / "sp.pt"
    request = TrainRequest(
        corpus=corpus_file,
        out=out,
        tokenizer={"kind": "sentencepiece", "vocab_size": 300},
        model={"layers": 1, "hidden": 16},
        train={"batch_size": 4, "seq_len": 16, "max_steps": 2, "max_time": 0, "sample_chars": 0},
    )
    prepare(request).run()
    return out


RESUME_CHANGES = {
    "batch-size": (["--batch-size", "4"], "--batch-size 4 differs from the resumed run's 8"),
    "seq-len": (["--seq-len", "16"], "--seq-len 16 differs from the resumed run's 32"),
    "model-shape": (["--hidden", "64"], "--hidden 64 differs from the resumed run's 32"),
    "tokenizer": (["--tokenizer", "sentencepiece"], "the resumed run uses the char tokenizer; drop --tokenizer"),
    "corpus": (["--corpus-changed"], "the corpus has changed since this run started"),
}


@pytest.mark.parametrize("change", list(RESUME_CHANGES))
def test_resume_with_a_changed_setting_is_refused_with_the_reason(
    cli, tmp_path: Path, tiny_checkpoint: Path, corpus_file: Path, change: str
) -> None:
    out = _resumable(tiny_checkpoint, tmp_path)
    flags, message = RESUME_CHANGES[change]
    corpus = corpus_file
    if flags == ["--corpus-changed"]:
        corpus = write(tmp_path / "edited.txt", corpus_file.read_text() + "one more line\n")
        flags = []
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    outcome = cli("train", corpus, "--resume", "--out", out, "--max-steps", "70", *flags)
    line = assert_clear_error(outcome, message)
    assert "another --out" in line or "drop --tokenizer" in line  # and what to do instead
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_resume_with_another_sentencepiece_vocabulary_size_is_refused(
    cli, tmp_path: Path, sentencepiece_run: Path, corpus_file: Path
) -> None:
    out = tmp_path / "sp.pt"
    shutil.copy(sentencepiece_run.with_name("sp.last.pt"), tmp_path / "sp.last.pt")
    outcome = cli("train", corpus_file, "--resume", "--out", out, "--vocab-size", "400", "--max-steps", "4")
    assert_clear_error(outcome, "--vocab-size 400 differs from the resumed run's 300")
    assert cli("train", corpus_file, "--resume", "--out", out, "--vocab-size", "300", "--max-steps", "4").code == 0


def test_resume_without_a_checkpoint_says_there_is_nothing_to_resume(cli, workdir: Path, corpus_file: Path) -> None:
    outcome = cli("train", corpus_file, "--resume", *FAST)
    assert_clear_error(outcome, "nothing to resume: checkpoints/chaucer.last.pt does not exist")
    assert files_in(workdir) == set()


def test_diverging_run_stops_with_one_line_and_keeps_finite_checkpoints(
    cli, tmp_path: Path, corpus_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = CharLM.nll
    calls = {"n": 0}

    def poisoned(self: CharLM, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        if not self.training:  # evaluation stays finite
            return real(self, *args, **kwargs)
        calls["n"] += 1
        loss, state = real(self, *args, **kwargs)
        return (loss * math.nan if calls["n"] > 7 else loss), state  # from step 8 on the loss is NaN

    monkeypatch.setattr(CharLM, "nll", poisoned)
    out = tmp_path / "m.pt"
    outcome = cli("train", corpus_file, *FAST, "--max-steps", "100", "--eval-every", "5", "--out", out)
    assert_clear_error(outcome, "training diverged: loss was not finite 5 steps in a row", "lower --lr")
    assert " ".join(outcome.stdout.split()).count("loss not finite, step skipped") == 4  # each skip is counted, visibly
    for path in (out, out.with_name("m.last.pt")):
        weights = load_checkpoint(path)["model"]
        assert all(torch.isfinite(w).all() for w in weights.values())
    assert load_checkpoint(out.with_name("m.last.pt"))["resume"]["step"] == 10


# --- Environment -----------------------------------------------------------------------------


def test_tests_keep_user_files_out_of_home() -> None:
    from chargen.paths import user_data_dir

    home = Path.home().resolve()
    assert home not in user_data_dir().resolve().parents and user_data_dir().resolve() != home


THREADS_PROBE = """
import os, sys
import chargen.cli.app
assert "torch" not in sys.modules, "importing the CLI must not start torch"
import chargen.training.run

def report(request, callbacks=None):
    import torch
    print(torch.get_num_threads())
    raise SystemExit(0)

chargen.training.run.prepare = report
for flags in ([], ["--threads", "1"]):
    sys.argv = ["chargen", "train", "corpus.txt", *flags]
    try:
        chargen.cli.app.main()
    except SystemExit:
        pass
"""


def test_threads_flag_and_omp_num_threads_are_honoured(tmp_path: Path) -> None:
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_NUM_THREADS"}
    result = subprocess.run(
        [sys.executable, "-c", THREADS_PROBE],
        env={**env, "OMP_NUM_THREADS": "2"},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "1"]  # OMP_NUM_THREADS by default; --threads wins
