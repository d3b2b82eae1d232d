"""`chargen serve`: the models on a local HTTP server (chargen.serve), for any program and any browser.

The server (Starlette under uvicorn) is the optional extra `chargen[serve]`: without it the
command says how to install it. It binds 127.0.0.1 unless told otherwise; Ctrl-C or SIGTERM
stops accepting, ends open streams with their final chunk and exits 0.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

from chargen.cli.common import StepPrecision
from chargen.errors import ChargenError, ConfigError

_LOCAL = {"127.0.0.1", "localhost", "::1"}


def serve(
    files: Annotated[list[Path], typer.Argument(help="Checkpoints and classifiers, each served under its file name.")],
    host: Annotated[
        str, typer.Option(help="Address to listen on (another than 127.0.0.1 warns without --api-key).")
    ] = ("127.0.0.1"),
    port: Annotated[int, typer.Option(help="Port (0: any free one, printed).")] = 8000,
    api_key: Annotated[
        str | None, typer.Option(envvar="CHARGEN_API_KEY", help="Clients must send Authorization: Bearer KEY.")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Most characters one completion may ask for.")] = 4096,
    max_n: Annotated[int, typer.Option(help="Most completions per prompt (n).")] = 16,
    max_batch: Annotated[int, typer.Option(help="Streams stepped together per model; more wait their turn.")] = 256,
    max_queue: Annotated[int, typer.Option(help="Requests waiting per model beyond which clients get 429.")] = 64,
    max_body: Annotated[int, typer.Option(help="Largest request body, in bytes.")] = 1 << 20,
    precision: StepPrecision = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
) -> None:
    """Serve FILES over HTTP: OpenAI-style /v1/completions and /v1/models, /v1/eval, /v1/classify,
    and a playground page at /."""
    from chargen.cli.common import pin_threads

    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ChargenError('chargen serve needs its extra: pip install "chargen[serve]"') from None
    for name, value in (
        ("--max-tokens", max_tokens),
        ("--max-n", max_n),
        ("--max-batch", max_batch),
        ("--max-queue", max_queue),
    ):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {port}")
    pin_threads(threads)
    from chargen.serve.app import ServeApp
    from chargen.serve.models import BATCH_MEASURED, load_all
    from chargen.serve.requests import Limits
    from chargen.serve.server import run
    from chargen.threads import chosen_by_user

    listening = _listen(host, port)  # before the slow loading: a busy port fails at once
    loaded = load_all(files, precision, not chosen_by_user(threads or 0))
    limits = Limits(
        max_tokens=max_tokens, max_n=max_n, max_streams=min(max_batch, Limits.max_streams), max_body=max_body
    )
    app = ServeApp(loaded, limits, api_key, max_batch, max_queue)
    address = listening.getsockname()
    shown = f"[{address[0]}]" if ":" in address[0] else address[0]
    if host not in _LOCAL and not api_key:
        print(
            f"Warning: serving on {host} without --api-key: anyone who can reach this machine can use these models",
            file=sys.stderr,
        )
    models = [f"{name} ({s.kernel.for_batch(BATCH_MEASURED).label} step)" for name, s in loaded.generators.items()]
    models += [f"{name} (classifier)" for name in loaded.classifiers]
    run(app, listening, f"chargen serve: http://{shown}:{address[1]}/ · {', '.join(models)} · Ctrl-C stops")


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a busy port is one clear error."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listening = socket.socket(family, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((host, port))
        listening.listen(2048)
    except OSError as err:
        reason = err.strerror or err
        raise ChargenError(f"cannot listen on {host}:{port}: {reason}; choose another --port or --host") from None
    return listening
