"""The two classifiers, both built from chargen's CharLM.

Every example is read as SEPARATOR + text + SEPARATOR, the way its language model saw it in
training (examples joined by the separator), so a model knows where a text starts and ends.

- GenerativeClassifier: one language model per class. An example's score for a class is the log
  prior minus the nats its model needs for the text (`CharLM.nll`, so any output layer works):
  Bayes' rule, with the bits per character of every class as a by-product.
- DiscriminativeClassifier: one language model's LSTM (`CharLM.encode`) read by a linear head
  over its last state and/or its states pooled over the text.

Both scale their scores by a temperature fitted on validation examples (`fit_temperature`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chargen.analysis.evaluate import EVAL_WINDOW
from chargen.config import ModelConfig
from chargen.data.tokenizers import Tokenizer
from chargen.device import autocast
from chargen.model import CharLM

SEPARATOR = "\x1e"  # ASCII record separator: never typed, so it marks an example's start and end
SCORE_BATCH = 64


def encode_examples(tokenizer: Tokenizer, texts: Sequence[str]) -> list[Tensor]:
    """Each text as ids of SEPARATOR + text + SEPARATOR (compact dtype)."""
    return [tokenizer.encode(SEPARATOR + text + SEPARATOR) for text in texts]


def joined_text(texts: Sequence[str]) -> str:
    """Examples as one stream for language-model training: every text between separators."""
    return SEPARATOR + SEPARATOR.join(texts) + SEPARATOR


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indexes in batches of similar length, so little of each batch is padding."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def pad(sequences: Sequence[Tensor], max_len: int = 0) -> tuple[Tensor, Tensor]:
    """Right-padded ids (B, T) and lengths (B,); with max_len, only the first max_len ids."""
    if max_len:
        sequences = [s[:max_len] for s in sequences]
    lengths = torch.tensor([len(s) for s in sequences])
    ids = torch.zeros(len(sequences), int(lengths.max()), dtype=torch.long)
    for row, s in enumerate(sequences):
        ids[row, : len(s)] = s.long()
    return ids, lengths


@torch.inference_mode()
def example_bits(lm: CharLM, sequences: Sequence[Tensor], device: torch.device, dtype: torch.dtype | None) -> Tensor:
    """Bits `lm` needs for each example after its opening separator, the closing one included (N,)."""
    was_training = lm.training
    lm.eval()
    bits = torch.zeros(len(sequences))
    for batch in length_batches([len(s) for s in sequences], SCORE_BATCH):
        ids, lengths = pad([sequences[i] for i in batch])
        x, y = ids[:, :-1].to(device), ids[:, 1:].to(device)  # (B, T)
        scored = (torch.arange(x.shape[1]) < (lengths - 1)[:, None]).to(device)
        state, nats = None, torch.zeros(len(batch), device=device)
        for start in range(0, x.shape[1], EVAL_WINDOW):
            window = slice(start, start + EVAL_WINDOW)
            with autocast(device, dtype):
                token_nll, state = lm.nll(x[:, window], y[:, window], state)
            nats += (token_nll.float() * scored[:, window]).sum(1)
        bits[batch] = nats.cpu() / math.log(2)
    lm.train(was_training)
    return bits


@dataclass
class Scores:
    logits: Tensor  # (N, K): softmax(logits / temperature) gives the probabilities
    bits: Tensor | None = None  # (N, K) bits for each text under each class's model (generative only)
    parts: dict[str, Tensor] | None = None  # an ensemble's parts' own logits (N, K), by name


class GenerativeClassifier(nn.Module):
    def __init__(self, config: ModelConfig, classes: int) -> None:
        super().__init__()
        self.lms = nn.ModuleList(CharLM(config) for _ in range(classes))
        self.register_buffer("log_prior", torch.zeros(classes))
        self.register_buffer("temperature", torch.ones(()))

    def logits_from_bits(self, bits: Tensor) -> Tensor:
        """Bayes' rule in log space: log P(class) + log P(text | class), (N, K)."""
        return self.log_prior.cpu() - bits * math.log(2)

    def scores(self, sequences: Sequence[Tensor], device: torch.device, dtype: torch.dtype | None) -> Scores:
        bits = torch.stack([example_bits(lm, sequences, device, dtype) for lm in self.lms], dim=1)  # (N, K)
        return Scores(self.logits_from_bits(bits), bits)


class DiscriminativeClassifier(nn.Module):
    def __init__(self, config: ModelConfig, classes: int, pooling: str, max_len: int) -> None:
        super().__init__()
        self.pooling, self.max_len = pooling, max_len
        self.lm = CharLM(config)
        self.head = nn.Linear(config.hidden * (3 if pooling == "all" else 1), classes)
        self.register_buffer("temperature", torch.ones(()))

    def forward(self, ids: Tensor, lengths: Tensor) -> Tensor:
        """ids (B, T) right-padded, lengths (B,) -> class logits (B, K)."""
        out, _ = self.lm.encode(ids)  # (B, T, H); padding comes after the text, so never reaches it
        out = out.float()
        lengths = lengths.to(ids.device)
        valid = (torch.arange(ids.shape[1], device=ids.device) < lengths[:, None])[..., None]  # (B, T, 1)
        pooled = {
            "last": out[torch.arange(len(ids), device=ids.device), lengths - 1],
            "mean": (out * valid).sum(1) / lengths[:, None],
            "max": out.masked_fill(~valid, -math.inf).amax(1),
        }
        features = torch.cat(list(pooled.values()), 1) if self.pooling == "all" else pooled[self.pooling]
        return self.head(features).float()

    @torch.inference_mode()
    def scores(self, sequences: Sequence[Tensor], device: torch.device, dtype: torch.dtype | None) -> Scores:
        was_training = self.training
        self.eval()
        logits = torch.zeros(len(sequences), self.head.out_features)
        for batch in length_batches([min(len(s), self.max_len) for s in sequences], SCORE_BATCH):
            ids, lengths = pad([sequences[i] for i in batch], self.max_len)
            with autocast(device, dtype):
                logits[batch] = self(ids.to(device), lengths).cpu()
        self.train(was_training)
        return Scores(logits)


Module = GenerativeClassifier | DiscriminativeClassifier


_TEMPERATURES = torch.logspace(-2, 3, 201)


def _temperature_losses(logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> Tensor:
    """Cross-entropy of softmax(logits / T) for each T of a log grid."""
    return torch.stack([F.cross_entropy(logits / t, labels, weight=weight) for t in _TEMPERATURES])


def fit_temperature(logits: Tensor, labels: Tensor, tolerance: float = 1e-3) -> float:
    """The temperature T for which softmax(logits / T) best predicts `labels`: probabilities that
    mean what they say. Among temperatures within `tolerance` nats of the best, the highest (the
    least confident) wins, so examples that are all told apart easily do not drive T to zero and
    every probability to exactly 0 or 1."""
    losses = _temperature_losses(logits, labels)
    good = (losses <= losses.min() + tolerance).nonzero()
    return float(_TEMPERATURES[int(good.max())])


def calibrated_loss(logits: Tensor, labels: Tensor, weight: Tensor | None = None) -> float:
    """The cross-entropy of the scores at their best temperature: how well they tell the classes
    apart, whatever their scale (a generative model's bits are far from calibrated)."""
    return float(_temperature_losses(logits, labels, weight).min())
