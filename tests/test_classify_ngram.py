"""The n-gram method, the ensemble and --pretrain-on, on data where the answer is certain."""

import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from chargen.checkpoint import load_checkpoint, save_checkpoint
from chargen.classify.api import load_classifier
from chargen.classify.ensemble import fit_share
from chargen.classify.fit import ClassifyRequest, fit
from chargen.classify.store import CLASSIFIER
from chargen.errors import CheckpointError, ConfigError
from chargen.training.events import Callbacks
from tests.helpers import chargen_command, latin_and_cyrillic

TINY_LSTM = {"layers": 1, "hidden": 32, "dropout": 0.0}
TINY_TRAIN = {"batch_size": 8, "seq_len": 32, "max_steps": 30, "max_time": 0, "eval_every": 15, "lr": 1e-2}


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scripts") / "scripts.tsv"
    path.write_text(
        "".join(f"{label}\t{text}\n" for label, text in latin_and_cyrillic(30, 1, scripts=3)), encoding="utf-8"
    )
    return path


class Phases(Callbacks):
    def __init__(self) -> None:
        self.phases: list[tuple[str, str]] = []
        self.messages: list[str] = []

    def on_phase(self, name: str, detail: str) -> None:
        self.phases.append((name, detail))

    def on_message(self, message: str) -> None:
        self.messages.append(message)


def train(data: Path, out: Path, method: str, callbacks: Callbacks | None = None, **options: Any):
    request = ClassifyRequest(
        data=data,
        out=out,
        classifier={"method": method, "test_frac": 0.2, **options.pop("classifier", {})},
        model=TINY_LSTM,
        train={**TINY_TRAIN, "precision": "fp32"},
        **options,
    )
    return fit(request, callbacks)


@pytest.fixture(scope="module")
def ngram_fitted(scripts: Path, tmp_path_factory: pytest.TempPathFactory):
    return train(scripts, tmp_path_factory.mktemp("ngram") / "ngram.clf", "ngram")


def test_ngram_tells_three_scripts_apart_without_a_language_model(ngram_fitted) -> None:
    assert ngram_fitted.test.accuracy == 1.0 and ngram_fitted.validation.accuracy == 1.0
    predictions = ngram_fitted.classifier.predict(["hello world", "привет мир", "γεια σου κοσμε"])
    assert [p.label for p in predictions] == ["latin", "cyrillic", "greek"]
    assert all(sum(p.probabilities.values()) == pytest.approx(1) for p in predictions)
    assert ngram_fitted.classifier.loaded.tokenizer is None


def test_an_ngram_classifier_file_loads_safely_and_predicts_the_same(ngram_fitted) -> None:
    payload = load_checkpoint(ngram_fitted.path, CLASSIFIER)
    assert "model_config" not in payload and payload["ngram"]["longest"] == 5
    assert all(isinstance(gram, str) for gram in payload["ngram"]["vocabulary"])
    loaded = load_classifier(ngram_fitted.path)
    texts = ["mixed смесь μειγμα", "abc", ""]
    expected = [list(p.probabilities.values()) for p in ngram_fitted.classifier.predict(texts)]
    assert [list(p.probabilities.values()) for p in loaded.predict(texts)] == [pytest.approx(e) for e in expected]


def test_an_ngram_file_without_its_vocabulary_is_refused(ngram_fitted, tmp_path: Path) -> None:
    payload = load_checkpoint(ngram_fitted.path, CLASSIFIER)
    payload["ngram"] = {"vocabulary": [1, 2], "longest": 5}
    broken = tmp_path / "broken.clf"
    save_checkpoint(broken, payload, CLASSIFIER)
    with pytest.raises(CheckpointError, match="no valid vocabulary"):
        load_classifier(broken)


def test_the_ensemble_weight_goes_to_the_part_that_knows() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (1000,), generator=generator)
    informative = 1.5 * torch.nn.functional.one_hot(labels, 3) + torch.randn(1000, 3, generator=generator)
    knowing = torch.log_softmax(informative, 1)  # right about three times in four
    noise = torch.log_softmax(torch.randn(1000, 3, generator=generator), 1)
    assert fit_share(knowing, noise, labels) == pytest.approx(1.0, abs=0.05)
    assert fit_share(noise, knowing, labels) == pytest.approx(0.0, abs=0.05)


def test_the_ensemble_reports_each_part_and_round_trips(scripts: Path, tmp_path: Path) -> None:
    recorder = Phases()
    fitted = train(scripts, tmp_path / "ensemble.clf", "ensemble", recorder)
    assert [name for name, _ in recorder.phases] == ["n-gram model", "base language model", "classifier"]
    assert any(m.startswith("ensemble weights fitted on the validation examples: n-gram") for m in recorder.messages)
    assert fitted.test.accuracy == 1.0 and set(fitted.test.parts) == {"ngram", "lstm"}
    assert fitted.test.parts["ngram"].accuracy == 1.0
    share = float(fitted.classifier.module.share)
    loaded = load_classifier(fitted.path, precision="fp32")
    assert float(loaded.module.share) == share
    texts = ["hello there", "привет", "γεια"]
    expected = [list(p.probabilities.values()) for p in fitted.classifier.predict(texts)]
    assert [list(p.probabilities.values()) for p in loaded.predict(texts)] == [
        pytest.approx(e, abs=1e-5) for e in expected
    ]


def test_pretrain_on_feeds_unlabelled_text_to_the_base_model(scripts: Path, tmp_path: Path) -> None:
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    (unlabelled / "a.txt").write_text("שלום עולם\n" * 50, encoding="utf-8")  # letters no labelled example has
    recorder = Phases()
    fitted = train(scripts, tmp_path / "pre.clf", "discriminative", recorder, pretrain_on=unlabelled)
    assert recorder.phases[0] == ("base language model", f"all 66 training examples and {unlabelled}, new")
    assert fitted.classifier.loaded.tokenizer.covers("שלום") == ""  # the unlabelled text's letters have ids


def test_pretrain_on_needs_a_base_model_phase(scripts: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--pretrain-frac above 0"):
        train(scripts, tmp_path / "x.clf", "discriminative", pretrain_on=scripts, classifier={"pretrain_frac": 0})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "bayes"], "Error: --method must be ensemble, ngram, discriminative or generative, got 'bayes'"),
        (["--method", "ngram", "--ngram-max", "0"], "Error: --ngram-max must be between 1 and 8, got 0"),
        (["--method", "discriminative", "--pretrain-on", "missing-folder"], "Error: "),
        (["--pretrain-on", "."], "Error: --pretrain-on and --init-from are for the LSTM's language model"),
    ],
)
def test_bad_ngram_and_pretrain_options_are_one_error_line(
    args: list[str], message: str, scripts: Path, tmp_path: Path
) -> None:
    command = [
        *chargen_command(),
        "classify",
        "train",
        str(scripts),
        "--out",
        str(tmp_path / "x.clf"),
        "--max-steps",
        "1",
    ]
    done = subprocess.run([*command, *args], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode != 0 and done.stderr.startswith(message) and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.clf").exists()


def test_a_part_right_on_every_validation_example_keeps_all_the_weight() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (12,), generator=generator)  # a validation set as small as a tiny data set's
    perfect = torch.log_softmax(5 * torch.nn.functional.one_hot(labels, 3).float(), 1)
    noise = torch.log_softmax(torch.randn(12, 3, generator=generator), 1)
    assert fit_share(perfect, noise, labels) == 1.0 and fit_share(noise, perfect, labels) == 0.0
