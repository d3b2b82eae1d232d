"""uvicorn, told how chargen's server stops: on Ctrl-C or SIGTERM it stops accepting, ends the open
streams at once (each with its final chunk and `data: [DONE]`) rather than waiting for them, and
returns normally, so the command exits 0 (uvicorn itself raises the signal again after a graceful
shutdown)."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType

import uvicorn

from chargen.serve.app import ServeApp

GRACE = 5  # seconds open connections get to finish once their streams have ended


class Server(uvicorn.Server):
    def __init__(self, app: ServeApp, banner: str) -> None:
        super().__init__(uvicorn.Config(app.asgi, log_level="warning", lifespan="on", timeout_graceful_shutdown=GRACE))
        self.app, self.banner = app, banner

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Say where it listens once it accepts and Ctrl-C stops it cleanly (scripts wait for this line)."""
        await super().startup(sockets)
        if self.started:
            print(self.banner, flush=True)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler runs on the event loop's thread, which may hold a scheduler's lock.
        threading.Thread(target=self.app.end_streams, daemon=True).start()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run(app: ServeApp, listening: socket.socket, banner: str) -> None:
    Server(app, banner).run(sockets=[listening])
