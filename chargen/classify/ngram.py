"""A character n-gram linear classifier: naive-Bayes log-count ratios as the features' scale
and a logistic regression on top (NBSVM, Wang & Manning 2012), trained in seconds on a CPU.

Every text is read as the set of its character 1..n-grams (padded with a space at each end, so
beginnings and ends are features too). Each class k scores a text by sum_f x_f r_fk v_fk + b_k
where x_f is 1 if the text has n-gram f, r_k the naive-Bayes log-count ratio of class k against
the rest, and v the regression's weights (multinomial, so any number of classes), penalised
towards 0 with a strength chosen on the validation examples.

The vocabulary (the training texts' most frequent n-grams) is stored in the classifier file as
a list of strings beside the weights; nothing is pickled.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chargen.classify.models import Scores, calibrated_loss

MAX_FEATURES = 1 << 20
MIN_TEXTS = 2  # an n-gram of a single training text says nothing about other texts
PENALTIES = (1e-3, 1e-4, 1e-5)  # of the squared weights, per training example
SMOOTHINGS = (1.0, 0.1, 0.01)  # naive Bayes' additive smoothing, for the plain naive-Bayes candidates
_RATIO_SMOOTHING = 1.0  # of the counts behind the log-count ratios


def ngrams(text: str, longest: int) -> set[str]:
    padded = f" {text} "
    return {padded[i : i + n] for n in range(1, longest + 1) for i in range(len(padded) - n + 1)}


def build_vocabulary(texts: Sequence[str], longest: int) -> list[str]:
    """The n-grams of the most training texts, at least MIN_TEXTS (ties in order of first appearance)."""
    frequency: Counter[str] = Counter()
    for text in texts:
        frequency.update(ngrams(text, longest))
    return [gram for gram, n in frequency.most_common(MAX_FEATURES) if n >= MIN_TEXTS]


class NgramClassifier(nn.Module):
    def __init__(self, vocabulary: list[str], classes: int, longest: int) -> None:
        super().__init__()
        self.vocabulary, self.longest = vocabulary, longest
        self.index = {gram: i for i, gram in enumerate(vocabulary)}
        self.weight = nn.Parameter(torch.zeros(len(vocabulary), classes))  # (F, K): r * v, folded
        self.bias = nn.Parameter(torch.zeros(classes))
        self.register_buffer("temperature", torch.ones(()))

    def features(self, texts: Sequence[str]) -> Features:
        """Each text's n-gram indexes, one flat list with each text's offset into it."""
        flat: list[int] = []
        offsets: list[int] = []
        for text in texts:
            offsets.append(len(flat))
            flat += [self.index[g] for g in ngrams(text, self.longest) if g in self.index]
        return Features(torch.tensor(flat, dtype=torch.long), torch.tensor(offsets, dtype=torch.long))

    def forward(self, x: Features) -> Tensor:
        return bag_logits(x, self.weight, self.bias)

    @torch.no_grad()
    def text_scores(self, texts: Sequence[str], *_: object) -> Scores:
        return Scores(self(self.features(texts)))


@dataclass
class Features:
    indexes: Tensor  # (total,) n-gram ids of all the texts, one after another
    offsets: Tensor  # (N,) where each text's ids start

    def rows(self) -> Tensor:
        """(total,) the text each id belongs to."""
        ends = torch.cat([self.offsets[1:], torch.tensor([len(self.indexes)])])
        return torch.repeat_interleave(torch.arange(len(self.offsets)), ends - self.offsets)


def bag_logits(x: Features, weight: Tensor, bias: Tensor) -> Tensor:
    """(N, K): the sum of each text's n-grams' weights, plus the bias."""
    return F.embedding_bag(x.indexes, weight, x.offsets, mode="sum") + bias


def class_counts(x: Features, labels: Tensor, features: int, classes: int) -> Tensor:
    """(F, K): how many of each class's training texts have each n-gram."""
    counts = torch.zeros(features, classes)
    counts.index_add_(0, x.indexes, F.one_hot(labels, classes).float()[x.rows()])
    return counts


def log_count_ratios(counts: Tensor) -> Tensor:
    """(F, K): log of how much likelier each n-gram is in class k's texts than in the others'."""
    counts = counts + _RATIO_SMOOTHING
    rest = counts.sum(1, keepdim=True) - counts + _RATIO_SMOOTHING
    return torch.log(counts / counts.sum(0)) - torch.log(rest / rest.sum(0))


def naive_bayes(counts: Tensor, labels: Tensor, smoothing: float) -> tuple[Tensor, Tensor]:
    """Multinomial naive Bayes on the binary n-gram features: log P(n-gram | class) (F, K), log prior (K,)."""
    smoothed = counts + smoothing
    prior = torch.bincount(labels, minlength=counts.shape[1]).float().clamp(min=1)
    return torch.log(smoothed / smoothed.sum(0)), torch.log(prior / prior.sum())


def _fit(x: Features, labels: Tensor, ratios: Tensor, penalty: float) -> tuple[Tensor, Tensor]:
    """The folded weights (F, K) and bias (K,) minimising cross-entropy + penalty * |v|^2 (L-BFGS)."""
    scale = torch.zeros_like(ratios, requires_grad=True)
    bias = torch.zeros(ratios.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([scale, bias], lr=1, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(bag_logits(x, ratios * scale, bias), labels) + penalty * scale.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return (ratios * scale).detach(), bias.detach()


def train_ngram(
    train_texts: Sequence[str],
    train_labels: Tensor,
    val_texts: Sequence[str],
    val_labels: Tensor,
    classes: int,
    longest: int,
) -> tuple[NgramClassifier, Tensor]:
    """The candidate that classifies the validation examples best (the regression at each penalty,
    plain naive Bayes at each smoothing), and its validation logits. Naive Bayes is among them
    because on small sets with many classes it often wins; it must win outright: ties in accuracy
    go to the regression, then to the lower calibrated loss."""
    model = NgramClassifier(build_vocabulary(train_texts, longest), classes, longest)
    x, val_x = model.features(train_texts), model.features(val_texts)
    counts = class_counts(x, train_labels, len(model.vocabulary), classes)
    ratios = log_count_ratios(counts)
    fits = [_fit(x, train_labels, ratios, penalty) for penalty in PENALTIES]
    fits += [naive_bayes(counts, train_labels, smoothing) for smoothing in SMOOTHINGS]
    ranks = []
    for n, (weight, bias) in enumerate(fits):
        logits = bag_logits(val_x, weight, bias)
        accuracy = float((logits.argmax(1) == val_labels).float().mean())
        ranks.append((-accuracy, n >= len(PENALTIES), calibrated_loss(logits, val_labels)))
    weight, bias = fits[ranks.index(min(ranks))]
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(bias)
        return model, model(val_x)
