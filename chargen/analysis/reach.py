"""How far back a model's memory reaches: the norm of d loss(t) / d h(t-k) against k.

The vanishing-gradient picture, measured on the user's model and text: windows of the text are
read one step at a time (after a warm-up), the loss at each window's last token is
differentiated with respect to every earlier hidden state, and the norms are averaged over the
windows. h is the hidden state of every layer together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from chargen.model import CharLM

REACH_WINDOWS = 32  # positions averaged over
REACH_LAGS = 100
REACH_WARMUP = 64


def gradient_reach(model: CharLM, ids: Tensor, lags: int = REACH_LAGS, seed: int = 0) -> list[float]:
    """Mean gradient norm at lags 0..K (K = `lags`, or fewer for a short text)."""
    model.eval()
    device = next(model.parameters()).device
    ids = ids.long()
    lags = max(1, min(lags, len(ids) - 2))
    warmup = max(0, min(REACH_WARMUP, len(ids) - lags - 2))
    span = warmup + lags + 2  # warm-up tokens, then lags + 1 read with gradients, then the target
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - span + 1, (REACH_WINDOWS,), generator=generator)
    windows = torch.stack([ids[s : s + span] for s in starts.tolist()]).to(device)  # (B, span)
    with torch.no_grad():
        _, state = model.encode(windows[:, :warmup]) if warmup else (None, None)
    hidden_states = []
    for t in range(warmup, warmup + lags + 1):
        state = tuple(s.detach() for s in state) if t == warmup and state is not None else state
        _, state = model.encode(windows[:, t : t + 1], state)
        h = state[0]
        h.retain_grad()
        hidden_states.append(h)
    # The top layer's h is the output the head reads (no dropout in eval mode).
    logits = model.head(hidden_states[-1][-1]).float()  # (B, V): the token after the last one read
    loss = F.cross_entropy(logits, windows[:, -1], reduction="sum")
    loss.backward()
    norms = [h.grad.permute(1, 0, 2).flatten(1).norm(dim=1).mean().item() for h in hidden_states]
    model.zero_grad(set_to_none=True)
    return norms[::-1]  # index k: the state k steps before the one that made the prediction
