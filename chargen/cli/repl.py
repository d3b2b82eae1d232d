"""`chargen repl`: load a model, then read lines from a line editor with history on a terminal,
or plain lines from a pipe, and hand them to chargen.cli.repl_terminal.serve.

Nothing heavy is imported at module level: chargen.cli.app imports this module, and `--help`
stays instant.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from chargen.cli.common import StepPrecision
from chargen.config import SampleConfig
from chargen.paths import user_data_dir

if TYPE_CHECKING:
    from chargen.cli.repl_terminal import Display

_DEFAULTS = SampleConfig()
PROMPT = "> "
LATE_STOP_SECONDS = 0.5  # a Ctrl-C this soon after the prompt appears does not end the session


def repl(
    checkpoint: Annotated[Path, typer.Argument(help="A chargen checkpoint.")],
    temperature: Annotated[float | None, typer.Option(help=f"0 = greedy [{_DEFAULTS.temperature}].")] = None,
    top_k: Annotated[int | None, typer.Option(help="Draw from the K likeliest only; 0 = off.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus probability; 1 = off.")] = None,
    length: Annotated[int | None, typer.Option(help=f"Characters per turn [{_DEFAULTS.length}].")] = None,
    seed: Annotated[int | None, typer.Option(help="The same seed and inputs give the same text [random].")] = None,
    stop: Annotated[str | None, typer.Option(help="End a turn at this text (\\n = newline).")] = None,
    color: Annotated[bool, typer.Option(help="Shade characters by the model's confidence.")] = False,
    precision: StepPrecision = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
) -> None:
    """Type an opening and watch the model continue it; change settings as you go (/help inside)."""
    from chargen.cli.common import given, pin_threads

    pin_threads(threads)
    from chargen.checkpoint import load_model
    from chargen.cli.repl_terminal import Display, serve
    from chargen.device import select_device
    from chargen.generation.sampler import Sampler
    from chargen.repl.commands import stop_strings
    from chargen.repl.session import Session, describe_model
    from chargen.threads import chosen_by_user

    stops = stop_strings(stop) if stop is not None else None
    config = SampleConfig(
        **given(temperature=temperature, top_k=top_k, top_p=top_p, length=length, seed=seed, stop=stops)
    )

    loaded = load_model(checkpoint)
    where = select_device(device)
    sampler = Sampler(loaded.model.to(where), loaded.tokenizer, where, precision, not chosen_by_user(threads or 0))
    session = Session(sampler, config, describe_model(checkpoint, loaded.payload, loaded.tokenizer.vocab_size))
    session.color = color
    interactive = sys.stdin is not None and sys.stdin.isatty() and sys.stdout.isatty()
    display = Display(interactive)
    if interactive:
        display.banner(session.title)
    serve(_terminal_lines(display) if interactive else _plain_lines(), session, display)


def _terminal_lines(display: Display, clock: Callable[[], float] = time.monotonic) -> Iterator[str]:
    """Lines typed at a prompt with editing and a persistent history. Ctrl-C clears a typed line,
    as in a shell; at an empty prompt it leaves, like Ctrl-D, unless the prompt has only just
    appeared (by `clock`): then it was meant to stop a generation that ended a moment before it
    arrived."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

    bindings = KeyBindings()
    shown_at = 0.0

    @bindings.add("c-c")
    def _clear_or_leave(event: KeyPressEvent) -> None:
        if event.current_buffer.text:
            event.current_buffer.reset()
        elif clock() - shown_at > LATE_STOP_SECONDS:
            event.app.exit(exception=EOFError)

    history, warning = open_history(user_data_dir() / "repl_history")
    if warning:
        display.hint(warning)
    prompt: PromptSession[str] = PromptSession(history=history, key_bindings=bindings)
    while True:
        shown_at = clock()
        try:
            yield prompt.prompt(PROMPT)
        except EOFError:
            return


def _plain_lines() -> Iterator[str]:
    """Lines from a pipe (or from a terminal when stdout is not one): no editing, no escape codes."""
    if sys.stdin is None:  # started with stdin closed
        return
    ask = sys.stdin.isatty()
    while True:
        if ask:
            sys.stderr.write(PROMPT)
            sys.stderr.flush()
        raw = sys.stdin.buffer.readline()
        if not raw:
            return
        yield raw.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r")


def open_history(path: Path) -> tuple[Any, str | None]:
    """A prompt_toolkit history kept in `path`; when that file cannot be written, one kept in
    memory and a warning."""
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    class TolerantFileHistory(FileHistory):
        def store_string(self, string: str) -> None:
            with contextlib.suppress(OSError):  # e.g. a full disk mid-session: losing history beats crashing
                super().store_string(string)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        return InMemoryHistory(), f"warning: cannot write the history file {path} ({reason}); history will not be kept"
    return TolerantFileHistory(path), None
