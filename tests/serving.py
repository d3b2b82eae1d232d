"""A real `chargen serve` in a subprocess on a free port of 127.0.0.1, for the serve tests."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time
from pathlib import Path

from chargen.generation.inference import precision_usable
from tests.helpers import chargen_command

# One precision for the server and `chargen sample` alike; int8's sums are exact in any batch.
PRECISION = "int8" if precision_usable("int8") else "fp32"
STARTUP = 120  # seconds: importing torch and measuring nothing (the precision is given)


class ServerProcess:
    def __init__(self, *args: object, home: Path, host: str = "127.0.0.1") -> None:
        command = [*chargen_command(), "serve", *map(str, args), "--host", host, "--port", "0", "--threads", "1"]
        env = {**os.environ, "CHARGEN_HOME": str(home)}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self._first_line()
        found = re.search(r"http://([\d.]+):(\d+)/", line)
        if found is None:
            self.process.kill()
            raise AssertionError(f"the server did not start: {line!r} {self.process.stderr.read()}")  # type: ignore[union-attr]
        self.url = f"http://{found.group(1)}:{found.group(2)}"
        self.banner = line

    def _first_line(self) -> str:
        """The line the server prints once it listens (or "" if it exits first)."""
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=STARTUP):
                self.process.kill()
                raise AssertionError("the server printed nothing")
        return self.process.stdout.readline()

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()

    def stderr(self) -> str:
        assert self.process.stderr is not None
        return self.process.stderr.read()


def wait_for(condition, timeout: float = 10.0, every: float = 0.02) -> bool:  # type: ignore[no-untyped-def]
    """Whether `condition()` became true within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return bool(condition())
