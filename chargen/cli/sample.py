"""`chargen sample`: text from a checkpoint, for a terminal, a script, a pipeline or a cron job.

Output is plain text (samples separated by a header line) or JSON Lines (one object per
sample); --out writes it atomically. A single sample on a terminal is shown as it is written.
Nothing heavy is imported at module level: chargen.cli.app imports this module, and `--help`
stays instant.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any

import typer

from chargen.atomic import replacing
from chargen.cli.common import StepPrecision
from chargen.config import SampleConfig, unescape
from chargen.errors import ChargenError, ConfigError

_DEFAULTS = SampleConfig()
_FORMATS = ("text", "jsonl")


def sample(
    checkpoint: Annotated[Path, typer.Argument(help="A chargen checkpoint.")],
    prime: Annotated[str | None, typer.Option("--prime", "-p", help="Text the model reads first.")] = None,
    prime_file: Annotated[str | None, typer.Option(help="Priming texts, one per line; - reads standard input.")] = None,
    whole_file: Annotated[bool, typer.Option(help="With --prime-file: the whole file is one priming text.")] = False,
    samples: Annotated[int, typer.Option("-n", "--samples", help="Samples per priming text.")] = 1,
    length: Annotated[int | None, typer.Option(help=f"Characters per sample [{_DEFAULTS.length}].")] = None,
    temperature: Annotated[float | None, typer.Option(help=f"0 = greedy [{_DEFAULTS.temperature}].")] = None,
    top_k: Annotated[int | None, typer.Option(help="Draw from the K likeliest only; 0 = off.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus probability in (0, 1]; 1 = off.")] = None,
    greedy: Annotated[bool, typer.Option(help="Always take the likeliest character (temperature 0).")] = False,
    seed: Annotated[int | None, typer.Option(help="Same seed, checkpoint and settings: same text.")] = None,
    stop: Annotated[
        list[str] | None, typer.Option(help="End a sample at this text; repeatable; \\n, \\t, \\r, \\\\ escapes.")
    ] = None,
    format: Annotated[str, typer.Option("--format", help="text or jsonl.")] = "text",
    out: Annotated[Path | None, typer.Option(help="Write to this file (atomically) instead of stdout.")] = None,
    show_prime: Annotated[bool, typer.Option(help="Text format: print each priming text before its sample.")] = True,
    first_index: Annotated[int, typer.Option(help="Number samples from here (sample i is stream i of the seed).")] = 0,
    precision: StepPrecision = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Say which sampling step runs, on stderr.")] = False,
) -> None:
    """Generate text from CHECKPOINT: one sample, many in parallel, or one per line of a file."""
    from chargen.cli.common import given, pin_threads

    if greedy and temperature not in (None, 0):
        raise ConfigError("use --greedy or --temperature, not both")
    config = SampleConfig(
        **given(
            length=length,
            temperature=0.0 if greedy else temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=tuple(unescape(s) for s in stop) if stop else None,
        )
    )
    if format not in _FORMATS:
        raise ConfigError(f"--format must be text or jsonl, got {format!r}")
    if samples < 1:
        raise ConfigError(f"-n must be at least 1, got {samples}")
    if first_index < 0:
        raise ConfigError(f"--first-index must be >= 0, got {first_index}")
    primes = read_primes(prime, prime_file, whole_file)

    chosen_threads = pin_threads(threads)
    from chargen.checkpoint import load_model
    from chargen.device import select_device
    from chargen.generation import fused
    from chargen.generation.draw import fresh_seed
    from chargen.generation.sampler import Sampler
    from chargen.threads import chosen_by_user

    loaded = load_model(checkpoint)
    where = select_device(device)
    sampler = Sampler(loaded.model.to(where), loaded.tokenizer, where, precision, not chosen_by_user(threads or 0))
    if verbose:
        sharing = ", fewer while other processes keep cores busy" if sampler.fair else ""
        native = f" · native step {fused.describe()}" if fused.PRECISION in sampler.kernel.precisions() else ""
        step = f"sampling step: {sampler.kernel.describe()}{native} · {where} · {chosen_threads} threads{sharing}"
        print(step, file=sys.stderr)
    if config.seed is None:
        config = replace(config, seed=fresh_seed())
    streams = [p for p in primes for _ in range(samples)]

    if len(streams) == 1 and format == "text" and out is None and sys.stdout.isatty():
        _stream_to_terminal(sampler, streams[0], config, first_index, show_prime, seed is None)
    else:
        _write_samples(sampler, streams, config, first_index, format, out, show_prime)
    note = sampler.load_note()
    if verbose and note:
        print(note, file=sys.stderr)


def _write_samples(
    sampler: Any,
    streams: list[str],
    config: SampleConfig,
    first_index: int,
    format: str,
    out: Path | None,
    show_prime: bool,
) -> None:
    """Every sample whole, as text or JSON lines, to stdout as each batch finishes or to `out`."""
    completions = sampler.completions(streams, config, first_index)
    precision_used = sampler.kernel.for_batch(len(streams)).precision
    settings = {**{k: v for k, v in asdict(config).items() if k != "seed"}, "precision": precision_used}
    records = (
        {
            "index": first_index + i,
            "seed": config.seed,
            "prime": streams[i],
            "text": c.text,
            "chars": len(c.text),
            "stopped": c.stopped,
            "settings": settings,
        }
        for i, c in enumerate(completions)
    )
    lines = format_jsonl(records) if format == "jsonl" else format_text(records, len(streams), show_prime)
    if out is None:
        for line in lines:
            sys.stdout.write(line)
            sys.stdout.flush()  # each sample as its batch finishes, for pipelines
    else:
        write_atomically(out, lines)


def read_primes(prime: str | None, prime_file: str | None, whole_file: bool) -> list[str]:
    """The priming texts: --prime, or --prime-file's lines (or whole text), or one empty text."""
    if prime is not None and prime_file is not None:
        raise ConfigError("use --prime or --prime-file, not both")
    if whole_file and prime_file is None:
        raise ConfigError("--whole-file needs --prime-file")
    if prime is not None:  # undecodable bytes in argv arrive as lone surrogates: make them U+FFFD
        return [prime.encode("utf-8", "surrogateescape").decode("utf-8", "replace")]
    if prime_file is None:
        return [""]
    name = "standard input" if prime_file == "-" else prime_file
    try:
        data = sys.stdin.buffer.read() if prime_file == "-" else Path(prime_file).read_bytes()
    except OSError as err:
        raise ChargenError(f"cannot read prime file {name}: {err.strerror or err}") from None
    try:
        text = data.decode("utf-8-sig").replace("\r\n", "\n")
    except UnicodeDecodeError as err:
        raise ChargenError(f"prime file {name} is not UTF-8 text (bad byte at offset {err.start})") from None
    if whole_file:
        return [text]
    lines = text.split("\n")
    return lines[:-1] if text.endswith("\n") else lines if text else []


def _stream_to_terminal(
    sampler: Any, prime: str, config: SampleConfig, first_index: int, show_prime: bool, seed_chosen: bool
) -> None:
    """Print the sample as it is written."""
    if show_prime:
        sys.stdout.write(prime)
    context = sampler.read([prime])
    last = prime if show_prime else ""
    for step in sampler.stream(context, config, first_index):
        if step.texts[0]:
            sys.stdout.write(step.texts[0])
            sys.stdout.flush()
            last = step.texts[0]
    sys.stdout.write("" if last.endswith("\n") else "\n")
    if seed_chosen:
        print(f"(seed {config.seed}: --seed {config.seed} repeats this sample)", file=sys.stderr)


def format_text(records: Iterable[dict[str, Any]], count: int, show_prime: bool) -> Iterator[str]:
    """Each sample (after its priming text) ending in a newline; a header line before each when
    there are several."""
    for record in records:
        header = f"--- sample {record['index']} ---\n" if count > 1 else ""
        body = (record["prime"] if show_prime else "") + record["text"]
        yield header + body + ("" if body.endswith("\n") else "\n")


def format_jsonl(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    for record in records:
        yield json.dumps(record, ensure_ascii=False) + "\n"


def write_atomically(path: Path, lines: Iterable[str]) -> None:
    """A reader (or a crash) sees the old file or the complete new one, never a part."""
    try:
        with replacing(path, "w", encoding="utf-8") as f:
            f.writelines(lines)
    except OSError as err:
        raise ChargenError(f"cannot write {path}: {err.strerror or err}") from None
