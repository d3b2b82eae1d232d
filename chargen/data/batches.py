"""Token ids -> parallel contiguous streams -> truncated-BPTT windows, with a resumable cursor.

The corpus is cut into B streams that are read side by side, so the hidden state that row b
ends one window with is the right state to start row b's next window with:

    ids:       a b c d e f g h i j k l m          (N = 13, B = 3, S = (N - 1) // B = 4)
    inputs:    a b c d | e f g h | i j k l        row b = ids[b*S : (b+1)*S]
    targets:   b c d e | f g h i | j k l m        the same, shifted by one

Each window takes `seq_len` columns; the last window of an epoch may be shorter, so every
target token is used exactly once per epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Cursor:
    """Where training is in the data: enough to resume at exactly the next window."""

    epoch: int = 0
    offset: int = 0  # column of the next window


class StreamBatches:
    """The ids (often a memory map of the token cache) seen as B streams; windows are copied out of
    it one at a time, so the corpus itself never enters process memory.

    `rows` serves a contiguous block of the B streams only (a process that trains part of the
    batch); its windows are those rows of the full batch's windows.
    """

    def __init__(self, ids: Tensor, batch_size: int, seq_len: int, rows: range | None = None) -> None:
        columns = (len(ids) - 1) // batch_size
        if columns < 1:
            raise ValueError("fewer tokens than streams")
        rows = rows if rows is not None else range(batch_size)
        if rows.step != 1 or not 0 <= rows.start < rows.stop <= batch_size:
            raise ValueError(f"rows {rows} is not a contiguous block of the {batch_size} streams")
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.columns = columns
        self.rows = rows
        inputs = ids[: batch_size * columns].view(batch_size, columns)  # (B, S), compact dtype
        targets = ids[1 : batch_size * columns + 1].view(batch_size, columns)
        self.inputs = inputs[rows.start : rows.stop]  # (rows, S)
        self.targets = targets[rows.start : rows.stop]

    @property
    def windows_per_epoch(self) -> int:
        return -(-self.columns // self.seq_len)

    @property
    def tokens_per_epoch(self) -> int:
        return self.batch_size * self.columns

    def window(self, cursor: Cursor) -> tuple[Tensor, Tensor, Cursor, bool]:
        """The window at `cursor`, the cursor after it, and whether it starts a new epoch
        (in which case the caller must reset the hidden state: the streams start over)."""
        start = cursor.offset
        stop = min(start + self.seq_len, self.columns)
        x = self.inputs[:, start:stop].long()  # (rows, T)
        y = self.targets[:, start:stop].long()
        nxt = Cursor(cursor.epoch, stop) if stop < self.columns else Cursor(cursor.epoch + 1, 0)
        return x, y, nxt, start == 0

    def epoch_progress(self, cursor: Cursor) -> float:
        return cursor.epoch + cursor.offset / self.columns


@dataclass
class EvalStreams:
    """A held-out text as parallel rows that together predict every token after the first once.

    Row j predicts its own segment; it first reads up to `burn_in` tokens of the segment before
    (not scored), so it starts with a warmed-up state as if the text were read in one pass.
    Windows are cut from `ids` as they are read, so a text of any length costs one window of memory.
    """

    ids: Tensor  # (N,) any integer dtype; may be memory-mapped
    spans: list[tuple[int, int, int]]  # per row: first input, end of targets, tokens of warm-up

    @classmethod
    def build(cls, ids: Tensor, rows: int, burn_in: int) -> EvalStreams:
        n_targets = len(ids) - 1
        rows = max(1, min(rows, n_targets // max(burn_in, 1)))
        segment = -(-n_targets // rows)
        spans = []
        for j in range(rows):
            first, last = j * segment, min((j + 1) * segment, n_targets)  # target index range
            if first >= last:
                break
            warm = min(burn_in, first)
            spans.append((first - warm, last, warm))
        return cls(ids, spans)

    @property
    def length(self) -> int:
        return max(last - start for start, last, _ in self.spans)

    def limited(self, targets_per_row: int) -> EvalStreams:
        """The same rows scoring only their first `targets_per_row` targets: evenly spaced
        contiguous spans of the text, whose figures are a subset of the whole reading's."""
        return EvalStreams(self.ids, [(s, min(last, s + warm + targets_per_row), warm) for s, last, warm in self.spans])

    def windows(self, width: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(inputs, targets, scored), each (rows, <= width), along the rows in step."""
        for offset in range(0, self.length, width):
            n = min(width, self.length - offset)
            inputs = torch.zeros(len(self.spans), n, dtype=torch.long)
            targets = torch.zeros(len(self.spans), n, dtype=torch.long)
            scored = torch.zeros(len(self.spans), n, dtype=torch.bool)
            for row, (start, last, warm) in enumerate(self.spans):
                begin, end = start + offset, min(start + offset + n, last)
                if begin >= end:
                    continue
                inputs[row, : end - begin] = self.ids[begin:end]
                targets[row, : end - begin] = self.ids[begin + 1 : end + 1]
                scored[row, max(warm - offset, 0) : end - begin] = True
            yield inputs, targets, scored


@dataclass
class Dataset:
    """A corpus already tokenized, with the character counts that turn nats into bits/char."""

    train_ids: torch.Tensor  # (N,) compact dtype, usually a memory map of the token cache
    val_ids: torch.Tensor
    train_chars: int
    val_chars: int  # characters the validation targets cover
    info: dict[str, Any] = field(default_factory=dict)  # source, sha256, ...: stored in checkpoints
