"""The real `chargen classify` command in subprocesses: train, eval, predict, and bad input."""

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import chargen_command, latin_and_cyrillic, tiny_flags

TINY = tiny_flags()
BUDGET = ["--max-steps", "40", "--eval-every", "20", "--lr", "0.01", "--precision", "fp32"]


def chargen(*args: object, stdin: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*chargen_command(), *map(str, args)], capture_output=True, text=True, input=stdin, cwd=cwd, timeout=300
    )


def test_train_eval_and_predict_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "scripts"
    for n, (label, text) in enumerate(latin_and_cyrillic()):  # the IMDB layout: data/<label>/<n>.txt
        (data / label).mkdir(parents=True, exist_ok=True)
        (data / label / f"{n}.txt").write_text(text, encoding="utf-8")
    trained = chargen(
        "classify", "train", data, "--method", "generative", "--test-frac", "0.2", *TINY, *BUDGET, cwd=tmp_path
    )
    assert trained.returncode == 0, trained.stderr
    assert (
        "class language models: one per label (cyrillic, latin)" in trained.stdout
        and "test: accuracy 100.00%" in trained.stdout
    )
    model = tmp_path / "checkpoints" / "scripts.clf"
    assert f"saved {Path('checkpoints') / 'scripts.clf'}" in trained.stdout

    evaluated = chargen("classify", "eval", model, data, "--format", "json")
    assert evaluated.returncode == 0, evaluated.stderr
    figures = json.loads(evaluated.stdout)
    assert figures["subset"] == "test" and figures["examples"] == 16 and figures["accuracy"] == 1.0
    assert figures["confusion"]["matrix"] == [[8, 0], [0, 8]]
    table = chargen("classify", "eval", model, data)
    assert "macro-F1 1.0000" in table.stdout and "confusion matrix" in table.stdout

    lines = "the cat sat on the mat\nкот сидел на ковре\n"
    predicted = chargen("classify", "predict", model, "--file", "-", "--format", "jsonl", stdin=lines)
    assert predicted.returncode == 0, predicted.stderr
    records = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert [r["label"] for r in records] == ["latin", "cyrillic"]
    assert records[1]["text"] == "кот сидел на ковре" and set(records[1]["bpc"]) == {"latin", "cyrillic"}
    plain = chargen("classify", "predict", model, "hello world")
    assert plain.stdout.startswith("latin\tlatin 0.") and '"hello world"' in plain.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("ham\thello\nham\tbye\n", "has only one label ('ham')"),
        ("ham\thello\nspam no tab here\n", "data.tsv line 2: no tab; each line must be label<TAB>text"),
        (b"ham\thello\nspam\tcaf\xe9\n", "is not valid UTF-8 (byte 0xe9 at offset 18) on line 2"),
    ],
)
def test_bad_labelled_data_is_one_error_line(content: str | bytes, message: str, tmp_path: Path) -> None:
    data = tmp_path / "data.tsv"
    data.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = chargen("classify", "train", data, "--out", tmp_path / "m.clf", *TINY, *BUDGET)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: ") and message in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "m.clf").exists()


def _tsv(path: Path, examples: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{label}\t{text}\n" for label, text in examples), encoding="utf-8")
    return path


def test_pooling_class_weights_and_validation_share_are_the_users_and_eval_scores_other_data(tmp_path: Path) -> None:
    """`--pooling max --no-class-weights --val-frac 0.25` on unbalanced data (60 Latin, 20
    Cyrillic): the head reads one pooled vector (not the default's three), the classifier keeps
    the settings, a quarter of each class is validation; `classify eval` on texts it never saw
    scores all of them."""
    from chargen.classify.api import load_classifier
    from chargen.classify.models import DiscriminativeClassifier

    examples = latin_and_cyrillic(per_class=60, seed=2)
    unbalanced = [e for e in examples if e[0] == "latin"] + [e for e in examples if e[0] == "cyrillic"][:20]
    data, model = _tsv(tmp_path / "scripts.tsv", unbalanced), tmp_path / "m.clf"
    options = ["--pooling", "max", "--no-class-weights", "--val-frac", "0.25", "--out", model]
    trained = chargen("classify", "train", data, "--method", "discriminative", *options, *TINY, *BUDGET)
    assert trained.returncode == 0, trained.stderr
    assert "validation: accuracy" in trained.stdout and "(20 examples)" in trained.stdout  # 15 + 5
    loaded = load_classifier(model).loaded
    assert (loaded.config.pooling, loaded.config.class_weights, loaded.config.val_frac) == ("max", False, 0.25)
    assert isinstance(loaded.module, DiscriminativeClassifier) and loaded.module.head.in_features == 32

    unseen = latin_and_cyrillic(per_class=15, seed=9)
    evaluated = chargen("classify", "eval", model, _tsv(tmp_path / "other.tsv", unseen), "--format", "json")
    assert evaluated.returncode == 0, evaluated.stderr
    figures = json.loads(evaluated.stdout)
    predicted = [p.label for p in load_classifier(model).predict([text for _, text in unseen])]
    right = sum(p == label for p, (label, _) in zip(predicted, unseen, strict=True))
    assert figures["subset"] == "all" and figures["examples"] == 30 and figures["accuracy"] == right / 30
