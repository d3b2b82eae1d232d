"""REPL commands: one input line -> a validated `Command`. Pure: a bad command or value is one
`CommandError` line and the session goes on."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from chargen.config import SampleConfig, unescape
from chargen.errors import ChargenError, ConfigError


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
