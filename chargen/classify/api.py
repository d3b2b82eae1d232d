"""The Python API for classifiers:

    from chargen import load_classifier

    spam = load_classifier("checkpoints/sms_spam.clf")
    for p in spam.predict(["WINNER!! Claim your prize now", "See you at 6?"]):
        print(p.label, p.probabilities)

`Classifier` is also what `chargen classify eval|predict` use and what training reports through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chargen.classify.ensemble import EnsembleClassifier
from chargen.classify.metrics import Report, report
from chargen.classify.models import Scores, encode_examples
from chargen.classify.ngram import NgramClassifier
from chargen.classify.store import LoadedClassifier, load_classifier_file
from chargen.data.labelled import Examples
from chargen.device import select_device, select_precision
from chargen.errors import CorpusError


@dataclass
class Prediction:
    label: str
    probabilities: dict[str, float]
    bpc: dict[str, float] | None  # bits per character under each class's model (generative method)

    def to_dict(self) -> dict[str, Any]:
        found = {"label": self.label, "probabilities": self.probabilities}
        return found if self.bpc is None else {**found, "bpc": self.bpc}


class Classifier:
    """A trained classifier ready to use. Build one with `load_classifier`."""

    def __init__(self, loaded: LoadedClassifier, device: torch.device, dtype: torch.dtype | None) -> None:
        self.loaded = loaded
        self.module = loaded.module.to(device).eval()
        self.device, self.dtype = device, dtype

    @property
    def labels(self) -> list[str]:
        return self.loaded.labels

    @property
    def method(self) -> str:
        return self.loaded.config.method

    @property
    def payload(self) -> dict[str, Any]:
        return self.loaded.payload

    def scores(self, texts: Sequence[str]) -> Scores:
        if isinstance(self.module, (NgramClassifier, EnsembleClassifier)):
            return self.module.text_scores(texts, self.loaded.tokenizer, self.device, self.dtype)
        assert self.loaded.tokenizer is not None
        return self.module.scores(encode_examples(self.loaded.tokenizer, texts), self.device, self.dtype)

    def probabilities(self, scores: Scores) -> torch.Tensor:
        """(N, K), calibrated by the temperature fitted on validation examples."""
        return torch.softmax(scores.logits / self.module.temperature.cpu(), dim=1)

    def predict(self, texts: str | Sequence[str]) -> list[Prediction]:
        """The likeliest label of each text, with every label's probability."""
        if isinstance(texts, str):
            texts = [texts]
        scores = self.scores(texts)
        probs = self.probabilities(scores).tolist()
        predictions = []
        for n, (text, row) in enumerate(zip(texts, probs)):
            bpc = None
            if scores.bits is not None:  # the closing separator is predicted too
                bpc = dict(zip(self.labels, (scores.bits[n] / (len(text) + 1)).tolist()))
            best = max(range(len(row)), key=row.__getitem__)
            predictions.append(Prediction(self.labels[best], dict(zip(self.labels, row)), bpc))
        return predictions

    def evaluate(self, examples: Examples) -> Report:
        """Accuracy, per-class precision and recall, macro-F1 and the confusion matrix (and, for
        an ensemble, each part's own report)."""
        unknown = sorted(set(examples.labels) - set(self.labels))
        if unknown:
            raise CorpusError(
                f"label {unknown[0]!r} is not one this classifier knows ({', '.join(self.labels)}); "
                "evaluate on data with the labels it was trained on"
            )
        index = {label: i for i, label in enumerate(self.labels)}
        scores, true = self.scores(examples.texts), [index[label] for label in examples.labels]
        parts = {
            name: report(self.labels, true, logits.argmax(1).tolist()) for name, logits in (scores.parts or {}).items()
        }
        return report(self.labels, true, scores.logits.argmax(1).tolist(), parts)


def load_classifier(path: str | Path, *, device: str = "auto", precision: str = "auto") -> Classifier:
    """Load a classifier file. precision: "fp32", "bf16" or "auto" (bf16 where the hardware runs it natively)."""
    where = select_device(device)
    return Classifier(load_classifier_file(path), where, select_precision(precision, where))
