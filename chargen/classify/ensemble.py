"""The n-gram model and an LSTM classifier together: a weighted sum of their calibrated log
probabilities, the weight fitted on the validation examples (the share that gives them the
lowest calibrated cross-entropy), so a part that adds nothing gets a weight near 0."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chargen.classify.models import Module, Scores, calibrated_loss, encode_examples
from chargen.classify.ngram import NgramClassifier
from chargen.data.tokenizers import Tokenizer

SHARES = torch.linspace(0, 1, 101)  # the n-gram model's weight; the LSTM's is 1 minus it


def calibrated_log_probs(logits: Tensor, temperature: Tensor) -> Tensor:
    return F.log_softmax(logits / temperature.cpu(), dim=1)


def combine(ngram: Tensor, lstm: Tensor, share: float) -> Tensor:
    """(N, K) logits from the parts' calibrated log probabilities."""
    return share * ngram + (1 - share) * lstm


def fit_share(ngram: Tensor, lstm: Tensor, labels: Tensor, tolerance: float = 1e-3) -> float:
    """The n-gram model's weight in [0, 1] that best predicts `labels`. Shares within `tolerance`
    nats of the best count as ties, which go to the one nearest the better part alone: when one
    part already tells every validation example apart, the other gets no weight on a whim."""
    losses = torch.tensor([calibrated_loss(combine(ngram, lstm, float(share)), labels) for share in SHARES])
    tied = SHARES[losses <= losses.min() + tolerance]
    return float(tied.max() if losses[-1] <= losses[0] else tied.min())


class EnsembleClassifier(nn.Module):
    def __init__(self, ngram: NgramClassifier, lstm: Module) -> None:
        super().__init__()
        self.ngram, self.lstm = ngram, lstm
        self.register_buffer("share", torch.tensor(0.5))  # the n-gram model's weight
        self.register_buffer("temperature", torch.ones(()))

    def part_log_probs(self, ngram_logits: Tensor, lstm_logits: Tensor) -> tuple[Tensor, Tensor]:
        return (
            calibrated_log_probs(ngram_logits, self.ngram.temperature),
            calibrated_log_probs(lstm_logits, self.lstm.temperature),
        )

    def text_scores(
        self, texts: Sequence[str], tokenizer: Tokenizer, device: torch.device, dtype: torch.dtype | None
    ) -> Scores:
        ngram = self.ngram.text_scores(texts).logits
        lstm = self.lstm.scores(encode_examples(tokenizer, texts), device, dtype)
        logits = combine(*self.part_log_probs(ngram, lstm.logits), float(self.share))
        return Scores(logits, lstm.bits, {"ngram": ngram, "lstm": lstm.logits})
