"""When ranks fail, every process exits and exactly one of them says why.

A rank that fails on its own (a corpus unreadable on one machine, memory run out) leaves its
message in the group's store and exits. Its peers fail in turn: gloo reports the closed
connection at once, a peer that stops answering at the group's timeout, or the launcher stops
them with SIGTERM. The first of them to claim the store's voice prints the failed rank's message;
the others exit quietly. Rank 0 reports its own errors itself, so an error every rank meets
alike (a bad option) is still one line. When the store is gone too, rank 0 speaks.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
from typing import Any

import torch

from chargen.errors import ChargenError

STORE_WAIT = datetime.timedelta(seconds=5)  # the store is local or one hop away; never wait long on it


class RankFailed(ChargenError):
    """A failure under torchrun whose reporting is settled: `speak` is True on one rank only."""

    def __init__(self, message: str, exit_code: int, speak: bool) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.speak = speak


class PeerFailed(ChargenError):
    """This rank stopped because another one did (or the launcher stopped the group)."""


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def network_reason(err: BaseException) -> str:
    """gloo's message without its source location and advice: "Connection closed by peer [ip]:port"."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", first_line(err))
    return text.split(". ")[0].rstrip(".")


def lost_peers(err: BaseException) -> bool:
    """A collective that failed because a peer did. gloo raises a bare RuntimeError from some calls
    (DDP's first broadcast: "gloo/transport/tcp/pair.cc: Connection closed by peer")."""
    if isinstance(err, torch.distributed.DistError | PeerFailed):
        return True
    return isinstance(err, RuntimeError) and any(mark in str(err) for mark in ("/gloo/", "NCCL", "c10d"))


def restarts_left() -> int:
    """How many more times torchrun will restart the group after this attempt fails."""
    env = os.environ
    return int(env.get("TORCHELASTIC_MAX_RESTARTS", "0")) - int(env.get("TORCHELASTIC_RESTART_COUNT", "0"))


class Failures:
    """One rank's side of the agreement, kept in the store of this attempt of the group."""

    def __init__(self, store: Any, rank: int, size: int) -> None:
        self.store = store
        self.rank = rank
        self.size = size

    def terminated(self, signum: int, frame: object) -> None:
        """SIGTERM from the launcher: a peer failed and torchrun is stopping the group."""
        raise PeerFailed("the launcher sent SIGTERM")

    def settle(self, err: BaseException) -> BaseException:
        """The exception this rank ends with: its own error, a report of a peer's, or silence."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the launcher's stop must not cut the report short
        if lost_peers(err):
            return RankFailed(self._peer_report(err), 1, self._claim_voice())
        if isinstance(err, MemoryError | torch.OutOfMemoryError):
            err = ChargenError(f"out of memory ({first_line(err)}); try a smaller --batch-size or --hidden")
        if isinstance(err, ChargenError):
            if self.rank == 0:
                return RankFailed(str(err), err.exit_code, self._claim_voice())
            self._leave_message(str(err))
            return RankFailed(str(err), err.exit_code, speak=False)
        if isinstance(err, Exception):  # an OSError or a bug: reported as app.main reports it
            if self.rank == 0:
                self._claim_voice()
            else:
                self._leave_message(f"failed with {type(err).__name__}: {first_line(err)}")
        return err

    def _peer_report(self, err: BaseException) -> str:
        left = restarts_left()
        cause = self._peer_message()
        if cause is None:
            cause = (
                f"rank {self.rank} lost its peers ({network_reason(err)}): another rank stopped without a word "
                "(killed, out of memory, or its machine went down)"
            )
            if not left:
                cause += "; --resume continues from the last checkpoint saved"
        if left:
            cause += f"; torchrun restarts the group ({left} restart{'s' if left > 1 else ''} left)"
        return cause

    def _leave_message(self, message: str) -> None:
        with contextlib.suppress(Exception):  # the store's host is gone: no one to tell
            self.store.set(f"error/{self.rank}", message)

    def _peer_message(self) -> str | None:
        try:
            self.store.set_timeout(STORE_WAIT)
            for rank in range(self.size):
                key = f"error/{rank}"
                if rank != self.rank and self.store.check([key]):
                    return f"rank {rank}: {self.store.get(key).decode('utf-8')}"
        except Exception:
            return None
        return None

    def _claim_voice(self) -> bool:
        """True for the first rank to ask; without a store, rank 0."""
        try:
            self.store.set_timeout(STORE_WAIT)
            return self.store.add("voice", 1) == 1
        except Exception:
            return self.rank == 0
