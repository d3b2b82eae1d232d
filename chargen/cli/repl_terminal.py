"""The REPL on a terminal: each line run as a command or a prompt, text streamed as it is
generated (shaded by confidence with /color), notes and hints, and Ctrl-C turned into "stop this
generation"."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from rich.color import Color
from rich.style import Style
from rich.text import Text

from chargen.cli.common import console, plain_output
from chargen.repl.commands import CommandError, parse_line
from chargen.repl.session import Session


def serve(lines: Iterator[str], session: Session, display: Display) -> None:
    """Run each line as a command or a prompt until the lines end or /quit."""
    ctrl_c = CtrlC(active=display.interactive)
    with ctrl_c.installed():
        for line in lines:
            try:
                command = parse_line(line)
                if command.name == "quit":
                    return
                if command.name == "generate":
                    with ctrl_c.generation() as stop:
                        _turn(session, command.value, display, stop)
                    continue
                display.note(session.apply(command))
                if command.name == "color" and session.color and display.interactive:
                    if plain_output():
                        display.hint("NO_COLOR is set, so the text is not shaded")
                    else:
                        display.legend()
            except CommandError as err:
                display.hint(str(err))


def _turn(session: Session, prime: str, display: Display, stop: threading.Event) -> None:
    unknown = session.unknown_characters(prime)
    if unknown:
        display.hint(f"not in the model's vocabulary, read as unknown: {unknown}")
    if display.interactive and prime:
        display.write(prime, "bold")
    for text, prob in session.generate(prime):
        display.write(text, shade(prob) if session.color else None)
        if stop.is_set():
            display.note("stopped")
            break
    display.end_line()


class CtrlC:
    """In a terminal session, Ctrl-C outside the line editor only raises a flag. A generation
    checks it between steps, so it stops at a step boundary (the model's state and the text shown
    agree) and the session goes on; pressed between turns, it is ignored. A second Ctrl-C during a
    generation that has not stopped yet interrupts as usual. From a pipe, Ctrl-C interrupts."""

    def __init__(self, active: bool) -> None:
        self.active = active
        self.pressed = threading.Event()
        self._generating = False

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._generating and self.pressed.is_set():
            raise KeyboardInterrupt
        self.pressed.set()

    @contextmanager
    def installed(self) -> Iterator[None]:
        if not self.active:
            yield
            return
        previous = signal.signal(signal.SIGINT, self._on_sigint)  # prompt_toolkit restores it after each prompt
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    @contextmanager
    def generation(self) -> Iterator[threading.Event]:
        self.pressed.clear()
        self._generating = True
        try:
            with _no_echo() if self.active else nullcontext():
                yield self.pressed
        finally:
            self._generating = False


@contextmanager
def _no_echo() -> Iterator[None]:
    """Keys typed during a generation are not echoed into its text (they still reach the next
    prompt), and Ctrl-C does not make the terminal drop output already written (which can cut an
    escape sequence in half)."""
    try:
        import termios

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
    except (ImportError, OSError, ValueError):  # not a POSIX terminal: leave it as it is
        yield
        return
    quiet = list(saved)
    quiet[3] = (quiet[3] & ~termios.ECHO) | termios.NOFLSH  # lflag
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


def _shade_rgb(x: float) -> tuple[int, int, int]:
    """0 -> red, 0.5 -> yellow, 1 -> green."""
    red, yellow, green = (215, 55, 55), (215, 195, 45), (70, 190, 90)
    a, b, t = (red, yellow, 2 * x) if x < 0.5 else (yellow, green, 2 * x - 1)
    r, g, b = (round(p + (q - p) * t) for p, q in zip(a, b))
    return r, g, b


_SHADES = [Style(color=Color.from_rgb(*_shade_rgb(i / 10))) for i in range(11)]


def shade(prob: float) -> Style:
    """The style for a character the model drew with probability `prob`: red where it guessed,
    green where it was sure."""
    return _SHADES[round(min(max(prob, 0.0), 1.0) * 10)]


class Display:
    """Generated text goes to stdout as it arrives. Notes (feedback, hints) go to stdout on a
    terminal and to stderr from a pipe, so piped stdout holds only the generated text."""

    def __init__(self, interactive: bool) -> None:
        self.interactive = interactive
        self._out = console(sys.stdout, soft_wrap=True)
        self._notes = console(sys.stdout if interactive else sys.stderr, soft_wrap=True)
        self._line_open = False

    def write(self, text: str, style: Style | str | None = None) -> None:
        if style is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            self._out.print(Text(text, style=style), end="")
        if text:
            self._line_open = not text.endswith("\n")

    def end_line(self) -> None:
        if self._line_open:
            self.write("\n")

    def note(self, message: str, style: str = "dim") -> None:
        self.end_line()
        self._notes.print(Text(message, style=style))

    def hint(self, message: str) -> None:
        self.note(message, style="yellow")

    def banner(self, title: str) -> None:
        self._notes.print(Text(title, style="bold") + Text("      /help for commands", style="dim"))

    def legend(self) -> None:
        scale = Text("  the model guessed ")
        for i in range(11):
            scale.append("█", style=_SHADES[i])
        self._notes.print(scale + Text(" it was sure (probability under the current settings)", style="dim"))
