"""The interactive session: type an opening, watch the model continue it, change a setting, go on.

Three layers, each readable alone:
- `parse_line`: one input line -> a `Command` (pure; a bad command or value is one `CommandError` line)
- `Session`: the model's running state, the settings and the text so far (no terminal I/O)
- `serve` and `Display`: run each line, stream each continuation as it is generated (shaded by
  confidence with /color), and turn Ctrl-C into "stop this generation".
Where the lines come from (a line editor with history, or a pipe) is chargen.repl_command's business.

Seeds: turn n of a session draws its random numbers from stream (seed, n) of the sampler, so a
session replayed with the same --seed (or after the same /seed) and the same inputs gives the same
text. /seed restarts the turn count.
"""

from __future__ import annotations

import difflib
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.color import Color
from rich.console import Console
from rich.style import Style
from rich.text import Text

from chargen.config import SampleConfig, unescape
from chargen.errors import ChargenError, ConfigError
from chargen.sample import Context, Sampler, fresh_seed


class CommandError(ChargenError):
    """A bad command or value: shown as one line, and the session goes on."""


@dataclass(frozen=True)
class Command:
    name: str  # generate, set, show, greedy, color, reset, save, info, help, quit
    value: Any = None


def _escape(text: str) -> str:
    """A stop string as it would be typed, in quotes: "\\n\\n"."""
    for char, typed in (("\\", "\\\\"), ("\n", "\\n"), ("\t", "\\t"), ("\r", "\\r")):
        text = text.replace(char, typed)
    return f'"{text}"'


def stop_strings(argument: str) -> tuple[str, ...]:
    """/stop's argument, with the escapes --stop reads (\\n, \\t, \\r, \\\\); off clears it."""
    return () if argument.strip().lower() in ("off", "none") else (unescape(argument),)


@dataclass(frozen=True)
class Setting:
    """A command that sets one SampleConfig field."""

    field: str
    parse: Callable[[str], Any]
    expects: str  # what a value must look like, for the hint
    example: str
    show: Callable[[Any], str]


SETTINGS = {
    "temp": Setting(
        "temperature",
        float,
        "a number >= 0",
        "/temp 0.7",
        lambda v: f"temperature {v:g}" + (" (greedy)" if v == 0 else ""),
    ),
    "topk": Setting("top_k", int, "a whole number >= 0", "/topk 40", lambda v: f"top-k {v or 'off'}"),
    "topp": Setting(
        "top_p", float, "a number in (0, 1]", "/topp 0.9", lambda v: f"top-p {v:g}" if v < 1 else "top-p off"
    ),
    "len": Setting("length", int, "a whole number >= 1", "/len 800", lambda v: f"length {v}"),
    "seed": Setting("seed", int, "a whole number", "/seed 3", lambda v: f"seed {v}"),
    "stop": Setting(
        "stop",
        stop_strings,
        "some text",
        "/stop \\n\\n",
        lambda v: "stop " + (" or ".join(map(_escape, v)) if v else "off"),
    ),
}
BY_FIELD = {s.field: s for s in SETTINGS.values()}
ALIASES = {
    "temperature": "temp",
    "top_k": "topk",
    "top-k": "topk",
    "top_p": "topp",
    "top-p": "topp",
    "length": "len",
    "colour": "color",
    "exit": "quit",
    "q": "quit",
    "?": "help",
}
NO_ARGUMENT = ("reset", "info", "help", "quit")
COMMANDS = sorted([*SETTINGS, "greedy", "color", "save", *NO_ARGUMENT])

HELP = """\
Type text and press Enter: the model reads it and continues. An empty line continues where it stopped.
  /temp T      temperature: lower is safer, higher is wilder; 0 = greedy
  /topk K      draw only from the K likeliest next characters (0 = off)
  /topp P      draw only from the likeliest characters that together have probability P (1 = off)
  /greedy      always take the likeliest character (/greedy off restores the temperature)
  /len N       characters per turn
  /seed N      restart the random numbers: the same seed and inputs give the same text
  /stop TEXT   end a turn when TEXT appears (\\n = newline; /stop off)
  /color       shade each character by the probability the model gave it (on/off)
  /reset       forget the text so far: the next turn starts fresh
  /save FILE   write the session's text (typed and generated) to FILE
  /info        the model and the current settings
  /quit        leave (or Ctrl-D, or Ctrl-C at an empty prompt)
A setting command without a value shows it. Ctrl-C stops a generation. Start a line with // to
send text that begins with /."""


def parse_line(line: str) -> Command:
    """One input line -> a validated Command; text that is not a command is a prompt."""
    if not line.startswith("/") or line.startswith("//"):
        return Command("generate", line[1:] if line.startswith("//") else line)
    word, _, argument = line[1:].partition(" ")
    name = ALIASES.get(word.lower(), word.lower())
    if name in SETTINGS:
        return _parse_setting(SETTINGS[name], argument if name == "stop" else argument.strip())
    argument = argument.strip()
    if name in ("greedy", "color"):
        if argument.lower() not in ("", "on", "off"):
            raise CommandError(f"/{name} takes on or off, got {argument!r}")
        return Command(name, {"": None, "on": True, "off": False}[argument.lower()])
    if name == "save":
        if not argument:
            raise CommandError("/save needs a file name, like /save out.txt")
        return Command("save", Path(argument).expanduser())
    if name in NO_ARGUMENT:
        if argument:
            raise CommandError(f"/{name} takes no value")
        return Command(name)
    close = difflib.get_close_matches(name, COMMANDS + list(ALIASES), n=1)
    guess = f"did you mean /{ALIASES.get(close[0], close[0])}? " if close else ""
    raise CommandError(f"unknown command /{word}: {guess}/help lists the commands")


def _parse_setting(setting: Setting, argument: str) -> Command:
    if not argument.strip():
        return Command("show", setting.field)
    try:
        value = setting.parse(argument)
    except ValueError:
        raise CommandError(f"{setting.field} must be {setting.expects}, like {setting.example}") from None
    try:
        replace(SampleConfig(), **{setting.field: value})  # validation lives in SampleConfig
    except ConfigError as err:
        raise CommandError(f"{str(err).removeprefix('--')}; like {setting.example}") from None
    return Command("set", {setting.field: value})


def describe_model(checkpoint: Path, payload: dict[str, Any], vocab_size: int) -> str:
    m, metrics = payload["model_config"], payload.get("metrics", {})
    bpc = metrics.get("best_val_bpc") or metrics.get("val_bpc")
    parts = [
        "chargen",
        checkpoint.name,
        f"{m['layers']}×{m['hidden']} {m['cell'].upper()}",
        f"{payload['tokenizer']['kind']} vocab {vocab_size}",
    ]
    if isinstance(bpc, float) and math.isfinite(bpc):
        parts.append(f"val {bpc:.2f} bpc")
    return " · ".join(parts)


class Session:
    """A conversation with one model: settings, the model's running state, and the text so far."""

    def __init__(self, sampler: Sampler, config: SampleConfig, title: str = "chargen") -> None:
        if config.seed is None:  # a random seed, shown by /info, so a good session can be replayed
            config = replace(config, seed=fresh_seed())
        self.sampler = sampler
        self.config = config
        self.title = title
        self.color = False
        self.context: Context | None = None
        self.turn = 0  # turns since the seed was set; turn n draws from stream (seed, n)
        self.context_chars = 0  # characters the model has read or written since the last reset
        self._pieces: list[str] = []  # everything typed and generated this session, for /save
        self._warm_temperature = config.temperature or SampleConfig.temperature

    def generate(self, prime: str) -> Iterator[tuple[str, float]]:
        """Read `prime` (empty: continue) and yield (new text, its probability) as the model writes."""
        self.context = self.sampler.read([prime], self.context)
        self._record(prime)
        first_index, self.turn = self.turn, self.turn + 1
        for step in self.sampler.stream(self.context, self.config, first_index):
            if step.texts[0]:
                self._record(step.texts[0])
                yield step.texts[0], float(step.probs[0])

    def _record(self, text: str) -> None:
        self._pieces.append(text)
        self.context_chars += len(text)

    @property
    def text(self) -> str:
        return "".join(self._pieces)

    def unknown_characters(self, text: str) -> str:
        covers = getattr(self.sampler.tokenizer, "covers", None)  # only character vocabularies lack any
        return covers(text) if covers else ""

    def apply(self, command: Command) -> str:
        """Carry out a command other than generate or quit; returns the feedback to show."""
        name, value = command.name, command.value
        if name == "set":
            self.config = replace(self.config, **value)
            if "seed" in value:
                self.turn = 0
            if self.config.temperature:
                self._warm_temperature = self.config.temperature
            return " · ".join(BY_FIELD[field].show(getattr(self.config, field)) for field in value)
        if name == "show":
            return BY_FIELD[value].show(getattr(self.config, value))
        if name == "greedy":
            on = not self.config.greedy if value is None else value
            return self.apply(Command("set", {"temperature": 0.0 if on else self._warm_temperature}))
        if name == "color":
            self.color = not self.color if value is None else value
            return f"colour {'on' if self.color else 'off'}"
        if name == "reset":
            self.context, self.context_chars = None, 0
            text = self.text
            if text and not text.endswith("\n\n"):  # in the saved text, a new paragraph
                self._pieces = [text, "\n" if text.endswith("\n") else "\n\n"]
            return "state reset: the next turn starts fresh"
        if name == "save":
            text = self.text
            try:
                value.write_text(text, encoding="utf-8")
            except OSError as err:
                raise CommandError(f"cannot write {value}: {err.strerror or err}") from None
            return f"saved {len(text):,} characters to {value}"
        if name == "info":
            return f"{self.title}\n{self.settings()}\n" + (
                f"the model has read {self.context_chars:,} characters since the last reset; "
                f"the session text is {len(self.text):,} characters"
            )
        if name == "help":
            return HELP
        raise ValueError(f"Session.apply cannot handle {command}")

    def settings(self) -> str:
        shown = [setting.show(getattr(self.config, field)) for field, setting in BY_FIELD.items()]
        shown[list(BY_FIELD).index("seed")] += f" (turn {self.turn})"
        shown.append(f"colour {'on' if self.color else 'off'}")
        shown.append(f"{self.sampler.device} {self.sampler.precision}")
        return " · ".join(shown)


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
        self._out = Console(file=sys.stdout, highlight=False, soft_wrap=True)
        self._notes = Console(file=sys.stdout if interactive else sys.stderr, highlight=False, soft_wrap=True)
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
