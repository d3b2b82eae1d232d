"""Both classifiers on data where the answer is certain (Latin letters or Cyrillic), with tiny models."""

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from chargen.checkpoint import load_checkpoint
from chargen.classify.api import load_classifier
from chargen.classify.fit import ClassifyRequest, fit
from chargen.classify.metrics import report
from chargen.classify.models import encode_examples, fit_temperature
from chargen.classify.trainer import EncodedExamples, ExampleBatches
from chargen.data.batches import Cursor
from chargen.data.labelled import Examples
from chargen.data.tokenizers import CharTokenizer
from chargen.errors import CheckpointError, CorpusError
from chargen.training.events import Callbacks, ClassifierEvalEvent
from chargen.training.trainer import Interrupted
from tests.helpers import TINY_MODEL, latin_and_cyrillic, tiny_train


@pytest.fixture(scope="module")
def labelled_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("labelled") / "scripts.tsv"
    path.write_text("".join(f"{label}\t{text}\n" for label, text in latin_and_cyrillic()), encoding="utf-8")
    return path


class Recorder(Callbacks):
    def __init__(self) -> None:
        self.phases: list[str] = []
        self.evals: list[ClassifierEvalEvent] = []  # of the classifier phase

    def on_phase(self, name: str, detail: str) -> None:
        self.phases.append(name)

    def on_classifier_eval(self, event: ClassifierEvalEvent) -> None:
        self.evals.append(event)


def train_classifier(data: Path, out: Path, method: str, callbacks: Callbacks | None = None, **options: Any):
    request = ClassifyRequest(
        data=data,
        out=out,
        classifier={"method": method, "test_frac": 0.2, **options.pop("classifier", {})},
        model=TINY_MODEL,
        train=tiny_train(**{"lr": 1e-2, **options}),
    )
    return fit(request, callbacks)


@pytest.fixture(scope="module", params=["generative", "discriminative"])
def trained(request: pytest.FixtureRequest, labelled_file: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("clf") / f"{request.param}.clf"
    recorder = Recorder()
    return request.param, train_classifier(labelled_file, out, request.param, recorder), recorder


def test_both_methods_tell_latin_from_cyrillic(trained) -> None:
    _, fitted, _ = trained
    assert fitted.test is not None and fitted.test.total == 16
    assert fitted.test.accuracy == 1.0 and fitted.validation.accuracy == 1.0
    predictions = fitted.classifier.predict(["the quick brown fox", "съешь же ещё этих мягких булок"])
    assert [p.label for p in predictions] == ["latin", "cyrillic"]
    assert all(
        p.probabilities[p.label] > 0.9 and sum(p.probabilities.values()) == pytest.approx(1) for p in predictions
    )


def test_training_reports_phases_and_validation_accuracy(trained) -> None:
    method, _, recorder = trained
    second = "class language models" if method == "generative" else "classifier"
    assert recorder.phases == ["base language model", second]
    assert [e.step for e in recorder.evals] == [20, 40] and recorder.evals[-1].accuracy == 1.0


def test_a_saved_classifier_loads_and_predicts_the_same(trained) -> None:
    method, fitted, _ = trained
    loaded = load_classifier(fitted.path, precision="fp32")
    texts = ["hello there", "привет", "mixed смесь"]
    assert loaded.method == method and loaded.labels == ["cyrillic", "latin"]
    before, after = fitted.classifier.predict(texts), loaded.predict(texts)
    for a, b in zip(before, after):
        assert a.label == b.label and a.probabilities == pytest.approx(b.probabilities, abs=1e-5)


def test_generative_predictions_carry_bits_per_character(trained) -> None:
    method, fitted, _ = trained
    [latin] = fitted.classifier.predict(["the quick brown fox jumps"])
    if method == "discriminative":
        assert latin.bpc is None
        return
    assert latin.bpc is not None and latin.bpc["latin"] < latin.bpc["cyrillic"]
    assert all(0 < bpc < 20 for bpc in latin.bpc.values())


def test_evaluation_refuses_labels_the_classifier_does_not_know(trained) -> None:
    _, fitted, _ = trained
    with pytest.raises(CorpusError, match=r"label 'greek' is not one this classifier knows \(cyrillic, latin\)"):
        fitted.classifier.evaluate(Examples(["αβγ"], ["greek"]))


def test_a_checkpoint_is_not_a_classifier_and_back(trained, tiny_checkpoint: Path) -> None:
    _, fitted, _ = trained
    with pytest.raises(CheckpointError, match="is a chargen checkpoint, not a chargen classifier"):
        load_classifier(tiny_checkpoint)
    with pytest.raises(CheckpointError, match="is a chargen classifier, not a chargen checkpoint"):
        load_checkpoint(fitted.path)


def test_a_corrupted_classifier_file_is_refused(trained, tmp_path: Path) -> None:
    _, fitted, _ = trained
    data = bytearray(fitted.path.read_bytes())
    (tmp_path / "cut.clf").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError, match="not a chargen classifier"):
        load_classifier(tmp_path / "cut.clf")


def test_init_from_a_language_model_grows_its_vocabulary(
    labelled_file: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    request = ClassifyRequest(
        data=labelled_file,
        out=tmp_path / "m.clf",
        classifier={"method": "discriminative", "pretrain_frac": 0},
        train=tiny_train(lr=1e-2),
        init_from=tiny_checkpoint,
    )
    fitted = fit(request)
    assert fitted.validation.accuracy == 1.0
    assert "б" in fitted.classifier.loaded.tokenizer.chars  # the Chaucer model had no Cyrillic


def test_ctrl_c_writes_no_classifier(labelled_file: Path, tmp_path: Path) -> None:
    class StopAtFive(Callbacks):
        def on_step(self, event: Any) -> None:
            if event.step == 5:
                import os
                import signal

                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted, match="interrupted while training the base language model; no classifier"):
        train_classifier(labelled_file, tmp_path / "m.clf", "generative", StopAtFive())
    assert not (tmp_path / "m.clf").exists()


def test_example_batches_visit_every_example_once_per_epoch_in_a_seeded_order() -> None:
    tokenizer = CharTokenizer("abc")
    sequences = encode_examples(tokenizer, ["a" * n for n in range(1, 23)])
    batches = ExampleBatches(EncodedExamples(sequences, torch.arange(22)), batch_size=4, max_len=10, seed=1)
    cursor, seen = Cursor(), []
    while cursor.epoch == 0:
        ids, lengths, labels, cursor = batches.batch(cursor)
        assert ids.shape == (len(labels), int(lengths.max())) and int(lengths.max()) <= 10
        seen += labels.tolist()
    assert sorted(seen) == list(range(22)) and batches.batches_per_epoch == 6
    again = ExampleBatches(EncodedExamples(sequences, torch.arange(22)), batch_size=4, max_len=10, seed=1)
    assert again.order(0) == batches.order(0) and again.order(1) != again.order(0)


def test_report_counts_precision_recall_and_macro_f1() -> None:
    scored = report(["ham", "spam"], true=[0, 0, 0, 0, 1, 1], predicted=[0, 0, 0, 1, 1, 0])
    assert scored.confusion == [[3, 1], [1, 1]]
    assert scored.accuracy == pytest.approx(4 / 6)
    assert scored.precision == pytest.approx([3 / 4, 1 / 2]) and scored.recall == pytest.approx([3 / 4, 1 / 2])
    assert scored.macro_f1 == pytest.approx((0.75 + 0.5) / 2)


def test_temperature_softens_overconfident_scores_without_collapsing() -> None:
    labels = torch.tensor([0, 1] * 50)
    separable = torch.stack([torch.where(labels == 0, 40.0, -40.0), torch.zeros(100)], dim=1)
    t = fit_temperature(separable, labels)
    probs = torch.softmax(separable / t, dim=1)
    assert 1 < t < 100 and 0.99 < float(probs[0, 0]) < 1.0
    noisy = separable.clone()
    noisy[:10] = -noisy[:10]  # a tenth confidently wrong: the others are right nine times in ten
    calibrated = torch.softmax(noisy / fit_temperature(noisy, labels), dim=1)
    assert float(calibrated[10, 0]) == pytest.approx(0.9, abs=0.01)
    assert math.isfinite(fit_temperature(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1])))


def test_class_models_read_their_texts_at_the_same_pace() -> None:
    from chargen.classify.models import GenerativeClassifier
    from chargen.classify.trainer import GenerativeTrainer
    from chargen.config import ModelConfig, TrainConfig

    texts = [torch.randint(1, 5, (1000,)), torch.randint(1, 5, (250,)), torch.randint(1, 5, (20,))]
    model = GenerativeClassifier(ModelConfig(vocab_size=5, layers=1, hidden=8), classes=3)
    val = EncodedExamples([torch.tensor([1, 2, 3])] * 3, torch.tensor([0, 1, 2]))
    config = TrainConfig(batch_size=8, seq_len=16, max_steps=10, max_time=0)
    trainer = GenerativeTrainer(model, texts, val, ["a", "b", "c"], config, torch.device("cpu"), None)
    assert [(s.batch_size, s.seq_len) for s in trainer.streams] == [(8, 16), (2, 16), (1, 16)]
    trainer.train_step()
    assert [c.offset for c in trainer.cursors] == [16, 16, 16]
