"""Output layers: from the top recurrent layer's output to a distribution over the vocabulary.

The full softmax scores every token at every position, so its cost grows with the vocabulary:
with a CJK alphabet (6,000 characters) it costs as much as the recurrent layers. The adaptive
softmax (Grave et al., 2017) ranks tokens by their frequency in the training text. The most
frequent ones form a small head together with one entry per cluster of rarer tokens; a token in
a cluster has probability p(cluster) p(token | cluster), each cluster scored through a narrow
projection (a quarter of the width per cluster further down). The distribution is exact and
normalised; training and evaluation score a cluster only at the positions whose target lies in it.

Both layers offer the same four things: `scores` (the whole distribution, softmax-ready),
`nll` (nats of given targets), `step_scorer` (the sampler's per-token form, fp32) and
`copy_grown` (fine-tuning with a grown vocabulary).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chargen.config import ModelConfig

_TAIL_DIVISOR = 4  # each cluster's projection is this much narrower than the one before
_HEAD_MASS = 0.8  # the head holds the most frequent tokens up to this share of the text...
_HEAD_MIN, _HEAD_MAX = 256, 1024  # ...within these bounds
_ROW_STEP = 16  # cluster row counts are padded to multiples of this at least (padded_rows)


def adaptive_cutoffs(counts: Tensor) -> tuple[int, ...]:
    """Cluster boundaries in frequency rank for token counts (V,): a head covering about
    _HEAD_MASS of the text, then clusters four times larger than the one before."""
    vocab = len(counts)
    mass = counts.double().sort(descending=True).values.cumsum(0)
    covering = int((mass < _HEAD_MASS * mass[-1].clamp(min=1)).sum()) + 1
    edge = min(max(covering, _HEAD_MIN), _HEAD_MAX)
    cutoffs = []
    while edge < vocab - 1:
        cutoffs.append(edge)
        edge *= _TAIL_DIVISOR
    return tuple(cutoffs) or (vocab - 1,)


def frequency_ranks(counts: Tensor) -> Tensor:
    """id -> rank (V,): 0 for the most frequent token; ties keep id order."""
    order = torch.sort(counts, descending=True, stable=True).indices
    return torch.empty_like(order).scatter_(0, order, torch.arange(len(order)))


class FullSoftmax(nn.Linear):
    """Every token scored at every position. A plain Linear, so its weights keep the names
    (head.weight, head.bias) that every earlier checkpoint has."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config.hidden, config.vocab_size)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=self.in_features**-0.5)
        nn.init.zeros_(self.bias)

    def scores(self, hidden: Tensor) -> Tensor:
        """(..., H) -> logits (..., V)."""
        return self(hidden)

    def nll(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """hidden (N, H), targets (N,) -> nats (N,)."""
        return F.cross_entropy(self(hidden).float(), targets, reduction="none")

    def step_scorer(self, device: torch.device, h_scale: float) -> Callable[[Tensor], Tensor]:
        """The sampler's form: (B, H) top states multiplied by h_scale -> logits (B, V), fp32."""
        weight_t, bias = _fp32(self.weight, device, 1 / h_scale).t().contiguous(), _fp32(self.bias, device)
        return lambda hs: torch.addmm(bias, hs, weight_t)

    @torch.no_grad()
    def copy_grown(self, old: FullSoftmax, mapping: Tensor) -> None:
        """Take `old`'s rows for a vocabulary that grew: old id i is id mapping[i] here."""
        self.weight[mapping] = old.weight
        self.bias[mapping] = old.bias


class AdaptiveSoftmax(nn.Module):
    """Frequent tokens in a head, rarer ones in clusters behind narrow projections.

    Everything inside works in frequency rank; `rank` (a buffer saved with the weights) maps
    token ids to ranks, so the tokenizer's ids stay as they are. Cluster k (from 1) holds ranks
    [bounds[k], bounds[k + 1]) and is scored through a projection to hidden / 4^k dimensions.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden, vocab = config.hidden, config.vocab_size
        self.bounds = (0, *config.cutoffs, vocab)
        self.shortlist = config.cutoffs[0]
        clusters = len(config.cutoffs)
        self.head = nn.Linear(hidden, self.shortlist + clusters)  # (..., S + clusters)
        self.tails = nn.ModuleList()
        for k in range(1, clusters + 1):
            width = max(1, hidden // _TAIL_DIVISOR**k)
            size = self.bounds[k + 1] - self.bounds[k]
            self.tails.append(nn.Sequential(nn.Linear(hidden, width, bias=False), nn.Linear(width, size)))
        self.register_buffer("rank", torch.arange(vocab))
        self.register_buffer("_inner_bounds", torch.tensor(config.cutoffs), persistent=False)
        self.register_load_state_dict_post_hook(_check_rank)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for linear in [self.head, *(layer for tail in self.tails for layer in tail)]:
            nn.init.normal_(linear.weight, std=linear.in_features**-0.5)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def set_frequencies(self, counts: Tensor) -> None:
        """Rank the tokens by their counts (V,) in the training text (before training)."""
        self.rank.copy_(frequency_ranks(counts))

    def scores(self, hidden: Tensor) -> Tensor:
        """(..., H) -> log-probabilities (..., V), in token-id order."""
        head = self.head(hidden).float().log_softmax(-1)
        parts = [head[..., : self.shortlist]]
        for k, tail in enumerate(self.tails):
            entry = head[..., self.shortlist + k, None]
            parts.append(tail(hidden).float().log_softmax(-1) + entry)
        return torch.cat(parts, -1).index_select(-1, self.rank)

    def nll(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """hidden (N, H), targets (N,) -> nats (N,): -log p(cluster) - log p(token | cluster),
        each cluster scored only for the rows whose target lies in it."""
        rank = self.rank[targets]  # (N,)
        cluster = torch.bucketize(rank, self._inner_bounds, right=True)  # 0 = the head's own tokens
        head_target = torch.where(cluster == 0, rank, self.shortlist + cluster - 1)
        nats = F.cross_entropy(self.head(hidden).float(), head_target, reduction="none")
        for k, tail in enumerate(self.tails, start=1):
            rows = (cluster == k).nonzero().squeeze(1)
            if len(rows):
                padded = padded_rows(rows)  # the first len(rows) are the cluster's own
                local = rank[padded] - self.bounds[k]
                inner = F.cross_entropy(tail(hidden[padded]).float(), local, reduction="none")
                nats = nats.index_add(0, rows, inner[: len(rows)])
        return nats

    def step_scorer(self, device: torch.device, h_scale: float) -> Callable[[Tensor], Tensor]:
        """The sampler's form: (B, H) top states multiplied by h_scale -> log-probabilities (B, V)
        in id order, fp32. All cluster projections run as one matmul."""
        head_w_t = _fp32(self.head.weight, device, 1 / h_scale).t().contiguous()
        head_b = _fp32(self.head.bias, device)
        proj_w_t = torch.cat([_fp32(t[0].weight, device, 1 / h_scale) for t in self.tails]).t().contiguous()
        widths = [t[0].out_features for t in self.tails]
        outs = [(_fp32(t[1].weight, device).t().contiguous(), _fp32(t[1].bias, device)) for t in self.tails]
        rank, shortlist = self.rank.to(device), self.shortlist

        def scores(hs: Tensor) -> Tensor:
            head = torch.addmm(head_b, hs, head_w_t).log_softmax(-1)  # (B, S + clusters)
            parts = [head[:, :shortlist]]
            for k, (low, (w_t, b)) in enumerate(zip((hs @ proj_w_t).split(widths, dim=1), outs)):
                parts.append(torch.addmm(b, low, w_t).log_softmax(-1) + head[:, shortlist + k, None])
            return torch.cat(parts, 1).index_select(1, rank)

        return scores

    @torch.no_grad()
    def copy_grown(self, old: AdaptiveSoftmax, mapping: Tensor) -> None:
        """Take `old`'s weights for a vocabulary that grew (old id i is id mapping[i] here): ranks
        are kept and the new tokens join the last cluster, as the rarest."""
        self.head.load_state_dict(old.head.state_dict())
        for tail, old_tail in zip(self.tails[:-1], old.tails[:-1]):
            tail.load_state_dict(old_tail.state_dict())
        proj, out = self.tails[-1]
        old_proj, old_out = old.tails[-1]
        proj.weight.copy_(old_proj.weight)
        out.weight[: old_out.out_features] = old_out.weight
        out.bias[: old_out.out_features] = old_out.bias
        added = torch.ones(len(self.rank), dtype=torch.bool)
        added[mapping] = False
        self.rank[mapping] = old.rank
        self.rank[added] = torch.arange(len(old.rank), len(self.rank))


def padded_rows(rows: Tensor) -> Tensor:
    """`rows` (n,) lengthened, by repeating its first entry, to one of a few sizes (steps of 1/8
    of the power of two below n, at least _ROW_STEP): the rows a cluster holds change at every
    window, and a bf16 matmul on CPU compiles a oneDNN kernel for each new row count (10-30 ms
    each, measured; ~2 s of a 300k-character evaluation), while a padded count recurs and
    reuses its kernel. The extra rows cost at most 1/8 more and are dropped afterwards."""
    n = len(rows)
    step = max(_ROW_STEP, 1 << max(n.bit_length() - 4, 0))
    return torch.cat([rows, rows[:1].expand(-n % step)])


def _check_rank(layer: AdaptiveSoftmax, _incompatible: object) -> None:
    """A loaded `rank` must be a permutation of the ids, or probabilities would land on the
    wrong tokens (or indexing would fail mid-sampling)."""
    rank = layer.rank
    if not torch.equal(rank.sort().values, torch.arange(len(rank), device=rank.device)):
        raise RuntimeError("the adaptive softmax's token ranks are not a permutation of the vocabulary")


OutputLayer = FullSoftmax | AdaptiveSoftmax


def make_output_layer(config: ModelConfig) -> OutputLayer:
    return AdaptiveSoftmax(config) if config.output == "adaptive" else FullSoftmax(config)


def _fp32(tensor: Tensor, device: torch.device, factor: float = 1.0) -> Tensor:
    return tensor.detach().to(device=device, dtype=torch.float32) * factor
