"""The built-in default corpus, made from text every Python installation has.

`stdlib` is the source of a fixed list of pure-Python standard-library modules, concatenated in
that order. It needs no download; it varies a little between Python versions.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

from chargen.atomic import replacing
from chargen.errors import CorpusError

STDLIB_MODULES = (
    "argparse.py",
    "textwrap.py",
    "difflib.py",
    "string.py",
    "shlex.py",
    "fractions.py",
    "heapq.py",
    "bisect.py",
    "functools.py",
    "dataclasses.py",
    "pprint.py",
    "calendar.py",
    "csv.py",
    "configparser.py",
    "fnmatch.py",
    "glob.py",
    "random.py",
    "statistics.py",
    "contextlib.py",
    "enum.py",
    "json/decoder.py",
    "json/encoder.py",
    "json/__init__.py",
    "gettext.py",
    "locale.py",
    "tokenize.py",
    "inspect.py",
    "ast.py",
    "typing.py",
    "collections/__init__.py",
    "pathlib.py",
    "shutil.py",
    "tempfile.py",
    "zipfile.py",
)


def stdlib_corpus() -> str:
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = [(root / name).read_text(encoding="utf-8") for name in STDLIB_MODULES if (root / name).is_file()]
    if not texts:
        raise CorpusError(f"no standard-library sources found under {root}")
    return "\n\n".join(texts)


def write_stdlib_corpus(path: Path) -> Path:
    """Write the corpus atomically (it is rebuilt, identically, when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, "w", encoding="utf-8") as f:
        f.write(stdlib_corpus())
    return path
