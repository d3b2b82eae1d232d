"""How surprised a model is by each token of a text: the bits it needed and its top guesses.

The text is read exactly as `chargen eval` reads it (chargen.analysis.evaluate's parallel rows,
each warmed up on the text before its segment), so the total here is `chargen eval`'s figure.
"""

from __future__ import annotations

import codecs
import math
from dataclasses import dataclass

import torch

from chargen.analysis.evaluate import EVAL_WINDOW, characters_scored, eval_streams
from chargen.data.tokenizers import Tokenizer
from chargen.model import CharLM

TOP_GUESSES = 5


@dataclass
class Surprise:
    pieces: list[str]  # the text of each token ("" for a byte that only completes a later character)
    bits: list[float]  # bits the model needed for each token (nan for the first: nothing predicts it)
    guesses: list[list[tuple[int, float]]]  # the model's top (token id, probability) before each token
    characters: int  # characters predicted, the denominator of bits per character

    @property
    def bpc(self) -> float:
        return sum(b for b in self.bits if math.isfinite(b)) / self.characters

    def line_bpc(self) -> list[float]:
        """Bits per character of each line (its newline included), for lines with any scored character."""
        lines, bits, chars = [], 0.0, 0
        for piece, b in zip(self.pieces, self.bits):
            if math.isfinite(b):
                bits += b
                chars += len(piece)
            if piece.endswith("\n"):
                lines.append(bits / chars if chars else math.nan)
                bits, chars = 0.0, 0
        if chars:
            lines.append(bits / chars)
        return lines


def token_pieces(tokenizer: Tokenizer, ids: list[int], text: str) -> list[str]:
    """Each token's text, so that the pieces concatenate to the text. A character tokenizer's
    token is the text's own character (an unseen one has the "unknown" id, which decodes to
    U+FFFD); subwords are decoded incrementally, so byte-fallback pieces of one character give
    the character once, on its last byte."""
    if tokenizer.kind == "char" and len(ids) == len(text):
        return list(text)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return [decoder.decode(tokenizer.token_bytes[i]) for i in ids]


@torch.inference_mode()
def read_surprise(model: CharLM, tokenizer: Tokenizer, text: str, ids: torch.Tensor) -> Surprise:
    model.eval()
    device = next(model.parameters()).device
    streams = eval_streams(ids)
    nats, top_p, top_i, scored = [], [], [], []
    state = None
    for x, y, mask in streams.windows(EVAL_WINDOW):
        logits, state = model(x.to(device), state)
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
        nats.append(-log_probs.gather(-1, y.to(device).unsqueeze(-1)).squeeze(-1).cpu())
        p, i = log_probs.exp().topk(min(TOP_GUESSES, log_probs.shape[-1]), dim=-1)
        top_p.append(p.cpu())
        top_i.append(i.cpu())
        scored.append(mask)
    # Row j predicts targets j*segment onwards, so the scored cells in row-major order are the
    # targets in text order.
    scored = torch.cat(scored, 1)
    target_bits = (torch.cat(nats, 1)[scored] / math.log(2)).tolist()
    probs, guess_ids = torch.cat(top_p, 1)[scored].tolist(), torch.cat(top_i, 1)[scored].tolist()
    id_list = ids.tolist()
    pieces = token_pieces(tokenizer, id_list, text)
    guesses = [[]] + [list(zip(i, p)) for i, p in zip(guess_ids, probs)]
    characters = characters_scored(tokenizer, ids)
    return Surprise(pieces, [math.nan, *target_bits], guesses, characters)
