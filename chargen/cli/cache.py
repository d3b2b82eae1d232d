"""`chargen cache list|clear`: the token cache (encoded corpora in $CHARGEN_HOME/cache)."""

from __future__ import annotations

import datetime

import typer

app = typer.Typer(
    help="The token cache: corpora already encoded, reused by later runs (in $CHARGEN_HOME/cache).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("list")
def list_cache() -> None:
    """Each cached corpus: its size, source, tokenizer and when it was built."""
    from chargen.data import token_cache

    folder = token_cache.cache_dir()
    found = token_cache.listing(folder) if folder.is_dir() else []
    print(f"{folder}: {len(found)} files, {sum(f.bytes for f in found) / 1e6:,.1f} MB")
    for entry in found:
        if entry.header is None:
            print(
                f"  {entry.path.name}  {entry.bytes / 1e6:,.1f} MB  damaged: {entry.problem} (rebuilt when next used)"
            )
            continue
        h = entry.header
        tokenizer = h["tokenizer"]["kind"]
        built = datetime.datetime.fromtimestamp(h["created"]).strftime("%Y-%m-%d %H:%M")
        print(
            f"  {entry.path.name}  {entry.bytes / 1e6:,.1f} MB  {h['length']:,} tokens ({tokenizer})  "
            f"built {built}  {h['source']}"
        )


@app.command("clear")
def clear_cache() -> None:
    """Delete every cached corpus (runs re-encode their corpus when next started)."""
    from chargen.data import token_cache

    folder = token_cache.cache_dir()
    count, freed = token_cache.clear(folder) if folder.is_dir() else (0, 0)
    print(f"removed {count} files ({freed / 1e6:,.1f} MB) from {folder}")
