"""The real `chargen` command: training end to end in subprocesses, fine-tuning, Ctrl-C. The
`info` and `eval` that inspect what a subprocess trained, and the refusals, run in this process
(`cli`): the same command without another torch import; their own subprocess runs are the bad-input
cases below, test_cli_app, test_cli_progress and test_history."""

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import CHINESE, SHAKESPEARE, Outcome, chargen_command, needs_shakespeare, run_cli, tiny_flags


def chargen(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*chargen_command(), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


SMALL = tiny_flags(hidden=48)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Outcome]:
    return lambda *args: run_cli(capsys, monkeypatch, *args)


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@needs_shakespeare
def test_train_a_few_hundred_steps_then_sample(tmp_path: Path, cli: Callable[..., Outcome]) -> None:
    corpus = tmp_path / "shakespeare.txt"
    corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    args = ["--layers", "2", "--hidden", "96", "--batch-size", "16", "--seq-len", "64", "--threads", "1"]
    result = chargen("train", corpus, *args, "--max-steps", "400", "--eval-every", "100", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "done: step 400" in result.stdout
    log = metrics(tmp_path / "checkpoints" / "shakespeare.metrics.jsonl")
    assert [r["step"] for r in log] == [100, 200, 300, 400]
    assert log[-1]["val_bpc"] < log[0]["val_bpc"] - 0.4 and log[-1]["val_bpc"] < 3.3
    info = cli("info", tmp_path / "checkpoints" / "shakespeare.pt")
    assert "best val bpc" in info.stdout and "char, vocab" in info.stdout
    sample = chargen(
        "sample",
        tmp_path / "checkpoints" / "shakespeare.pt",
        "--prime",
        "ROMEO:",
        "--length",
        "200",
        "--seed",
        "1",
        "--no-show-prime",
    )
    assert sample.returncode == 0, sample.stderr
    assert len(sample.stdout.rstrip("\n")) == 200 and " " in sample.stdout


def test_train_a_small_corpus_info_and_eval(corpus_file: Path, tmp_path: Path, cli: Callable[..., Outcome]) -> None:
    out = tmp_path / "runs" / "chaucer.pt"
    result = chargen("train", corpus_file, *SMALL, "--max-steps", "30", "--eval-every", "15", "--out", out)
    assert result.returncode == 0, result.stderr
    assert out.is_file() and out.with_name("chaucer.last.pt").is_file()
    evaluated = cli("eval", out, corpus_file, "--format", "json")
    report = json.loads(evaluated.stdout)
    assert 0 < report["bpc"] < 8 and report["characters"] == len(corpus_file.read_text()) - 1


def test_quiet_prints_nothing(corpus_file: Path, tmp_path: Path) -> None:
    result = chargen("train", corpus_file, *SMALL, "--max-steps", "5", "--out", tmp_path / "q.pt", "--quiet")
    assert result.returncode == 0 and result.stdout == ""


def test_sentencepiece_reports_bits_per_character(
    corpus_file: Path, tmp_path: Path, cli: Callable[..., Outcome]
) -> None:
    out = tmp_path / "sp.pt"
    result = chargen(
        "train",
        corpus_file,
        *SMALL,
        "--tokenizer",
        "sentencepiece",
        "--vocab-size",
        "300",
        "--max-steps",
        "30",
        "--eval-every",
        "30",
        "--out",
        out,
    )
    assert result.returncode == 0, result.stderr
    [record] = metrics(tmp_path / "sp.metrics.jsonl")
    report = json.loads(cli("eval", out, corpus_file, "--format", "json").stdout)
    assert report["tokens"] < report["characters"]  # subwords: fewer tokens than characters
    assert 0 < record["val_bpc"] < 8 and 0 < report["bpc"] < 8  # per character, not per token


def test_chinese_corpus_trains_and_unseen_characters_do_not_crash(tmp_path: Path, cli: Callable[..., Outcome]) -> None:
    corpus = tmp_path / "poems.txt"
    corpus.write_text(CHINESE * 40, encoding="utf-8")
    result = chargen("train", corpus, *SMALL, "--max-steps", "20", "--eval-every", "20", "--out", tmp_path / "zh.pt")
    assert result.returncode == 0, result.stderr
    unseen = tmp_path / "unseen.txt"
    unseen.write_text("白日依山尽，黄河入海流。欲穷千里目，更上一层楼。\n", encoding="utf-8")
    assert cli("eval", tmp_path / "zh.pt", unseen).code == 0


def test_adaptive_softmax_trains_evaluates_and_samples_from_the_command_line(
    tmp_path: Path, cli: Callable[..., Outcome]
) -> None:
    corpus = tmp_path / "poems.txt"
    corpus.write_text(CHINESE * 40, encoding="utf-8")
    out = tmp_path / "zh.pt"
    result = chargen("train", corpus, *SMALL, "--output", "adaptive", "--max-steps", "20", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "adaptive softmax (head" in result.stdout
    assert "adaptive softmax (head" in cli("info", out).stdout
    report = json.loads(cli("eval", out, corpus, "--format", "json").stdout)
    assert 0 < report["bpc"] < 6
    sample = chargen("sample", out, "--prime", "床前", "--length", "40", "--seed", "1", "--no-show-prime")
    assert sample.returncode == 0, sample.stderr
    assert len(sample.stdout.rstrip("\n")) == 40


def test_weight_drop_is_set_kept_in_the_checkpoint_and_changed_when_fine_tuning(
    corpus_file: Path, tmp_path: Path, cli: Callable[..., Outcome]
) -> None:
    out = tmp_path / "wd.pt"
    trained = chargen("train", corpus_file, *SMALL, "--max-steps", "4", "--weight-drop", "0.3", "--out", out)
    assert trained.returncode == 0, trained.stderr
    assert "weight drop 0.3" in cli("info", out).stdout
    tuned = chargen(
        "train", corpus_file, "--init-from", out, "--weight-drop", "0", "--max-steps", "2", "--out", tmp_path / "t.pt"
    )
    assert tuned.returncode == 0, tuned.stderr
    assert "weight drop 0.0" in cli("info", tmp_path / "t.pt").stdout
    refused = cli("train", corpus_file, *SMALL, "--weight-drop", "1", "--out", tmp_path / "x.pt")
    assert refused.code == 1 and refused.stderr.startswith("Error: --weight-drop must be in [0, 1)")


def test_fine_tuning_refuses_new_characters_unless_the_vocabulary_grows(
    tiny_checkpoint: Path, tmp_path: Path, cli: Callable[..., Outcome]
) -> None:
    corpus = tmp_path / "new.txt"
    corpus.write_text("Whan that Aprille — with ñ and 中\n" * 60, encoding="utf-8")
    refused = cli("train", corpus, "--init-from", tiny_checkpoint, "--max-steps", "5", "--out", tmp_path / "f.pt")
    assert refused.code == 1
    assert refused.stderr.startswith("Error: the corpus has 3 characters the model's vocabulary lacks")
    grown = chargen(
        "train",
        corpus,
        "--init-from",
        tiny_checkpoint,
        "--grow-vocab",
        "--max-steps",
        "5",
        "--batch-size",
        "4",
        "--seq-len",
        "32",
        "--out",
        tmp_path / "f.pt",
    )
    assert grown.returncode == 0, grown.stderr
    assert "vocabulary grew by 3 characters" in grown.stdout


def test_ctrl_c_saves_a_checkpoint_that_resumes(corpus_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.pt"
    process = subprocess.Popen(
        [
            *chargen_command(),
            "train",
            str(corpus_file),
            *SMALL,
            "--max-steps",
            "100000",
            "--eval-every",
            "100000",
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert "LSTM" in process.stdout.readline()  # the run's description: training has started
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stderr.strip().startswith("Error: interrupted at step") and "--resume" in stderr
    assert len(stderr.strip().splitlines()) == 1
    step = int(stderr.split("interrupted at step ")[1].split(";")[0])
    resumed = chargen("train", corpus_file, *SMALL, "--resume", "--max-steps", str(step + 10), "--out", out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {step}" in resumed.stdout and f"done: step {step + 10}" in resumed.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "missing.txt"], "missing.txt does not exist"),
        (["train", "empty.txt"], "empty.txt is empty"),
        (["train", "latin1.txt"], "latin1.txt is not valid UTF-8 (byte 0xe9 at offset 3)"),
        (["train", "image.png"], "image.png looks binary"),
        (["train", "nothing/"], "holds no text files"),
        (["train", "ok.txt", "--hidden", "0"], "--hidden must be between 1 and 8192, got 0"),
        (["train", "ok.txt", "--lr", "-1"], "--lr must be in (0, 1)"),
        (["train", "ok.txt", "--max-time", "soon"], "cannot read duration 'soon'"),
        (["train", "ok.txt", "--out", "/proc/chargen/m.pt"], "cannot write to /proc/chargen"),
        (["train", "ok.txt", "--output", "sparse"], "--output must be auto, full or adaptive, got 'sparse'"),
        (["train", "ok.txt", "--output", "adaptive", "--tie-weights"], "--tie-weights needs the full softmax"),
        (["info", "ok.txt"], "ok.txt is not a chargen checkpoint"),
        (["eval", "ok.txt", "ok.txt"], "ok.txt is not a chargen checkpoint"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("café au lait".encode("latin-1"))
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10)
    (tmp_path / "nothing").mkdir()
    (tmp_path / "ok.txt").write_text("some text\n" * 100, encoding="utf-8")
    result = chargen(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.startswith("Error: ") and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
