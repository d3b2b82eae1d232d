"""The `chargen` command: one module per command, registered here, and one place that turns
every user-facing failure into a single `Error:` line. Heavy imports happen inside commands so
`--help` is instant."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from chargen.allocator import retain_freed_memory
from chargen.cli import cache, classify, demo, evaluate, info, plot, repl, report, sample, serve, train
from chargen.errors import ChargenError
from chargen.threads import prepare_runtime

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Character-level text generation: train on your own text, sample, explore in a REPL.",
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"chargen {version('chargen')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Character-level text generation: train on your own text, sample, explore in a REPL."""


app.command()(train.train)
app.command("eval")(evaluate.evaluate)
app.command()(info.info)
app.command()(demo.demo)
app.command()(sample.sample)
app.command()(repl.repl)
app.command()(plot.plot)
app.command()(report.report)
app.command()(serve.serve)
app.add_typer(cache.app, name="cache")
app.add_typer(classify.app, name="classify")


def main() -> None:
    """Run the app; every user-facing failure becomes one line on stderr and an exit code."""
    prepare_runtime()  # before any command imports torch
    retain_freed_memory()
    try:
        code = app(standalone_mode=False)
    except ChargenError as err:
        _fail(str(err), err.exit_code, err.speak)
    except typer.Abort:
        _fail("aborted", 130)
    except typer.TyperException as err:
        if type(err).__name__ == "NoArgsIsHelpError":
            print(err.format_message())
            sys.exit(0)
        _fail(" ".join(err.format_message().split()), err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        # The reader (e.g. `head`) went away: stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except OSError as err:
        # The machine failed rather than the input (a disk filled while writing the metrics log, a
        # folder vanished): what and where, in one line.
        where = f": {err.filename}" if err.filename else ""
        _fail(f"{err.strerror or err}{where}", 1)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int, speak: bool | None = None) -> None:
    """Under torchrun one rank speaks for all: the one the ranks settled on, else rank 0."""
    if speak or (speak is None and os.environ.get("RANK", "0") == "0"):
        print(f"Error: {message}", file=sys.stderr)
    sys.exit(code)
