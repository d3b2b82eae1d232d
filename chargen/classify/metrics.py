"""How well a classifier did: accuracy, per-class precision and recall, macro-F1, the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Report:
    labels: list[str]
    confusion: list[list[int]]  # confusion[true][predicted]
    parts: dict[str, Report] = field(default_factory=dict)  # an ensemble's parts, each on its own

    @property
    def total(self) -> int:
        return sum(map(sum, self.confusion))

    @property
    def accuracy(self) -> float:
        return sum(self.confusion[i][i] for i in range(len(self.labels))) / max(self.total, 1)

    @property
    def support(self) -> list[int]:
        return [sum(row) for row in self.confusion]

    @property
    def precision(self) -> list[float]:
        predicted = [sum(row[j] for row in self.confusion) for j in range(len(self.labels))]
        return [_ratio(self.confusion[j][j], predicted[j]) for j in range(len(self.labels))]

    @property
    def recall(self) -> list[float]:
        return [_ratio(self.confusion[i][i], n) for i, n in enumerate(self.support)]

    @property
    def f1(self) -> list[float]:
        return [_ratio(2 * p * r, p + r) for p, r in zip(self.precision, self.recall)]

    @property
    def macro_f1(self) -> float:
        """The mean F1 over the labels present in the data (a rare class counts as much as a common one)."""
        present = [f for f, n in zip(self.f1, self.support) if n]
        return sum(present) / max(len(present), 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "examples": self.total,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "labels": {
                label: {"precision": p, "recall": r, "f1": f, "support": n}
                for label, p, r, f, n in zip(self.labels, self.precision, self.recall, self.f1, self.support)
            },
            "confusion": {"rows": "true label", "columns": "predicted label", "matrix": self.confusion},
            **({"parts": {name: part.to_dict() for name, part in self.parts.items()}} if self.parts else {}),
        }


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def report(
    labels: Sequence[str], true: Sequence[int], predicted: Sequence[int], parts: dict[str, Report] | None = None
) -> Report:
    """Label indexes -> a Report over `labels`."""
    confusion = [[0] * len(labels) for _ in labels]
    for t, p in zip(true, predicted):
        confusion[t][p] += 1
    return Report(list(labels), confusion, parts or {})
