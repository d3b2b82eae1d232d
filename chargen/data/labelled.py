"""Labelled examples for classification, in the four layouts people keep them in:

    folders   data/pos/*.txt, data/neg/*.txt     one sub-folder per label, each file one example
    files     data/pos.txt, data/neg.txt         one file per label, one example per line
    tsv       label<TAB>text, one per line       (the SMS Spam Collection's layout)
    jsonl     {"label": ..., "text": ...}, one per line

Bytes are decoded by chargen.data.corpus's rules (strict UTF-8 or --replace-invalid, binary
sniffing, BOM, newlines), so a labelled file fails the same way a corpus does. Every problem is
one CorpusError naming the file, and the line where there is one.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from chargen.data.corpus import ReadOptions, decode, folder_files, looks_binary
from chargen.errors import CorpusError

DATA_FORMATS = ("auto", "folders", "files", "tsv", "jsonl")
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
_TSV_SUFFIXES = (".tsv", ".tab")


@dataclass(frozen=True)
class Examples:
    texts: list[str]
    labels: list[str]

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels))

    def counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {label: counts[label] for label in self.classes}

    def subset(self, indexes: Sequence[int]) -> Examples:
        return Examples([self.texts[i] for i in indexes], [self.labels[i] for i in indexes])

    def __len__(self) -> int:
        return len(self.texts)


def read_examples(path: str | Path, data_format: str = "auto", options: ReadOptions | None = None) -> Examples:
    """Every example under `path`, in file order; `data_format` "auto" tells the layout from
    the path (a folder with sub-folders, a folder of files, a .tsv or .jsonl file, or a file's
    first line)."""
    path, options = Path(path), options or ReadOptions()
    if data_format not in DATA_FORMATS:
        raise CorpusError(f"--data-format must be one of {', '.join(DATA_FORMATS)}, got {data_format!r}")
    if not path.exists():
        raise CorpusError(f"{path} does not exist; give a folder of labelled examples or a .tsv or .jsonl file")
    if path.is_dir():
        if data_format == "auto":
            data_format = "folders" if any(p.is_dir() for p in _visible(path)) else "files"
        if data_format not in ("folders", "files"):
            raise CorpusError(f"{path} is a folder; --data-format {data_format} needs a file")
        examples = _read_folders(path, options) if data_format == "folders" else _read_label_files(path, options)
    else:
        if data_format in ("folders", "files"):
            raise CorpusError(f"{path} is a file; --data-format {data_format} needs a folder")
        text = decode(_read_bytes(path), str(path), options)
        if data_format == "auto":
            data_format = _line_format(path, text)
        examples = _parse_lines(path, text, _tsv_example if data_format == "tsv" else _jsonl_example)
    if not examples.texts:
        raise CorpusError(f"{path} holds no examples")
    return examples


def require_classes(examples: Examples, source: str | Path) -> None:
    """Training needs something to tell apart."""
    if len(examples.classes) < 2:
        found = f"only one label ({examples.classes[0]!r})" if examples.classes else "no labels"
        raise CorpusError(f"{source} has {found}; a classifier needs examples of at least two labels")


def hold_out(examples: Examples, fraction: float, seed: int, purpose: str) -> tuple[Examples, Examples]:
    """A stratified, seeded split: about `fraction` of every class held out (at least one
    example each), the rest kept; both in their original order. The same examples and seed
    always give the same split."""
    rng = random.Random(f"{seed}:{purpose}")
    held: list[int] = []
    for label in examples.classes:
        members = [i for i, found in enumerate(examples.labels) if found == label]
        if len(members) < 2:
            raise CorpusError(
                f"label {label!r} has only {len(members)} example: too few to hold out {purpose} examples "
                "and keep some for training; add examples of it"
            )
        count = min(len(members) - 1, max(1, round(len(members) * fraction)))
        held += rng.sample(members, count)
    chosen = set(held)
    kept = [i for i in range(len(examples)) if i not in chosen]
    return examples.subset(kept), examples.subset(sorted(chosen))


@dataclass
class Split:
    train: Examples
    val: Examples
    test: Examples | None


def fingerprint(examples: Examples) -> str:
    """Identifies a data set, so evaluation can recognise the one a classifier was trained on."""
    digest = hashlib.sha256()
    for label, text in zip(examples.labels, examples.texts):
        digest.update(f"{label}\x1f{text}\x1e".encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def split_examples(examples: Examples, test_frac: float, val_frac: float, seed: int) -> Split:
    """The same examples, fractions and seed always give the same split."""
    rest, test = hold_out(examples, test_frac, seed, "test") if test_frac else (examples, None)
    train, val = hold_out(rest, val_frac, seed, "validation")
    return Split(train, val, test)


# --- the layouts ----------------------------------------------------------------------------------
def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise CorpusError(f"cannot read {path}: {err.strerror or err}") from None


def _text_files(files: list[Path], options: ReadOptions) -> list[tuple[Path, str]]:
    """Decoded files, skipping those that look binary (as a corpus folder does)."""
    decoded = []
    for file in files:
        data = _read_bytes(file)
        if options.allow_binary or not looks_binary(data):
            decoded.append((file, decode(data, str(file), options)))
    return decoded


def _read_folders(path: Path, options: ReadOptions) -> Examples:
    """One sub-folder per label, each file in it (recursively) one example."""
    texts, labels = [], []
    for folder in (p for p in _visible(path) if p.is_dir()):
        found = _text_files(folder_files(folder), options)
        if not found:
            raise CorpusError(f"label {folder.name!r} ({folder}) holds no examples; add text files to it or remove it")
        for file, text in found:
            if not text.strip():
                raise CorpusError(f"{file} is empty; each file in a label folder is one example")
            texts.append(text.strip())
            labels.append(folder.name)
    return Examples(texts, labels)


def _read_label_files(path: Path, options: ReadOptions) -> Examples:
    """One file per label (named by the file's stem), one example per non-blank line."""
    texts, labels = [], []
    files = _text_files([p for p in _visible(path) if p.is_file()], options)
    stems = Counter(file.stem for file, _ in files)
    for file, text in files:
        if stems[file.stem] > 1:
            raise CorpusError(f"two files in {path} are named {file.stem!r}; each label needs exactly one file")
        lines = [line.strip() for line in text.split("\n") if line.strip()]
        if not lines:
            raise CorpusError(f"label {file.stem!r} ({file}) holds no examples; add lines to it or remove it")
        texts += lines
        labels += [file.stem] * len(lines)
    return Examples(texts, labels)


def _line_format(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    if suffix in _TSV_SUFFIXES:
        return "tsv"
    first = next((line for line in text.split("\n") if line.strip()), "")
    if first.lstrip().startswith("{"):
        return "jsonl"
    if "\t" in first:
        return "tsv"
    raise CorpusError(
        f"cannot tell the layout of {path}: its first line is neither label<TAB>text nor a JSON object; "
        "pass --data-format tsv or jsonl"
    )


# One line -> (label, text), None to skip the line, or a ValueError saying what is wrong with it.
LineParser = Callable[[str, int], tuple[str, str] | None]


def _parse_lines(path: Path, text: str, parse: LineParser) -> Examples:
    texts, labels = [], []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            example = parse(line, number)
        except ValueError as err:
            raise CorpusError(f"{path} line {number}: {err}") from None
        if example is not None:
            labels.append(example[0])
            texts.append(example[1])
    return Examples(texts, labels)


def _tsv_example(line: str, number: int) -> tuple[str, str] | None:
    label, tab, text = line.partition("\t")
    label, text = label.strip(), text.strip()
    if not tab:
        raise ValueError("no tab; each line must be label<TAB>text")
    if number == 1 and (label.lower(), text.lower()) == ("label", "text"):
        return None  # a header line
    if not label:
        raise ValueError("the label before the tab is empty")
    if not text:
        raise ValueError(f"no text after the label {label!r}")
    return label, text


def _jsonl_example(line: str, number: int) -> tuple[str, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict) or "label" not in record or "text" not in record:
        raise ValueError('each line must be a JSON object with "label" and "text" fields')
    label, text = record["label"], record["text"]
    if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
        raise ValueError(f'"label" must be a non-empty string or an integer, not {json.dumps(label)}')
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f'"text" must be a non-empty string, not {json.dumps(text)[:40]}')
    return str(label).strip(), text.strip()
