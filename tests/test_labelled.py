import json
from pathlib import Path

import pytest

from chargen.data.corpus import ReadOptions
from chargen.data.labelled import Examples, hold_out, read_examples, require_classes
from chargen.errors import CorpusError
from tests.helpers import latin_and_cyrillic

PAIRS = latin_and_cyrillic(per_class=6)


def write_layout(layout: str, folder: Path, pairs: list[tuple[str, str]] = PAIRS) -> Path:
    """The same examples in each of the four layouts."""
    if layout == "folders":
        for n, (label, text) in enumerate(pairs):
            (folder / label).mkdir(parents=True, exist_ok=True)
            (folder / label / f"{n:03}.txt").write_text(text + "\n", encoding="utf-8")
        return folder
    if layout == "files":
        folder.mkdir(parents=True, exist_ok=True)
        for label in {label for label, _ in pairs}:
            lines = [text for found, text in pairs if found == label]
            (folder / f"{label}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "tsv":
        path = folder / "data.tsv"
        path.write_text("".join(f"{label}\t{text}\n" for label, text in pairs), encoding="utf-8")
        return path
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps({"label": label, "text": text}) + "\n" for label, text in pairs), "utf-8")
    return path


@pytest.mark.parametrize("layout", ["folders", "files", "tsv", "jsonl"])
def test_each_layout_is_detected_and_read_whole(layout: str, tmp_path: Path) -> None:
    examples = read_examples(write_layout(layout, tmp_path / layout))
    assert sorted(zip(examples.labels, examples.texts)) == sorted(PAIRS)
    assert examples.counts() == {"cyrillic": 6, "latin": 6}


@pytest.mark.parametrize("layout", ["folders", "files", "tsv", "jsonl"])
def test_each_layout_can_be_chosen_by_option(layout: str, tmp_path: Path) -> None:
    path = write_layout(layout, tmp_path / layout)
    renamed = path if path.is_dir() else path.rename(path.with_suffix(".txt"))  # no suffix to go by
    assert len(read_examples(renamed, layout)) == len(PAIRS)


def test_tsv_header_is_skipped_and_text_keeps_later_tabs(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text("label\ttext\nham\tsee you\tat 6\n\nspam\tWIN now\n", encoding="utf-8")
    examples = read_examples(path)
    assert examples.labels == ["ham", "spam"] and examples.texts == ["see you\tat 6", "WIN now"]


def test_jsonl_integer_labels_become_strings(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"label": 1, "text": "great"}\n{"label": 0, "text": "awful", "id": 7}\n', encoding="utf-8")
    assert read_examples(path).labels == ["1", "0"]


def test_bom_and_crlf_are_handled_as_in_a_corpus(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_bytes(b"\xef\xbb\xbfham\thello\r\nspam\tbuy\r\n")
    examples = read_examples(path)
    assert examples.labels == ["ham", "spam"] and examples.texts == ["hello", "buy"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("ham\thello\nspam buy now\n", r"d\.txt line 2: no tab; each line must be label<TAB>text"),
        ("ham\thello\n\t buy\n", r"line 2: the label before the tab is empty"),
        ("ham\thello\n\nspam\t  \n", r"line 3: no text after the label 'spam'"),
    ],
)
def test_malformed_tsv_lines_are_named_by_number(content: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "d.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CorpusError, match=message):
        read_examples(path, "tsv")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"label": "a", "text": "x"', r"line 2: not valid JSON \(Expecting ',' delimiter at column 27\)"),
        ('{"label": "a"}', r'line 2: each line must be a JSON object with "label" and "text" fields'),
        ('["a", "x"]', r'line 2: each line must be a JSON object with "label" and "text" fields'),
        ('{"label": null, "text": "x"}', r'line 2: "label" must be a non-empty string or an integer, not null'),
        ('{"label": "a", "text": 5}', r'line 2: "text" must be a non-empty string, not 5'),
    ],
)
def test_malformed_jsonl_lines_are_named_by_number(line: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"label": "b", "text": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=message):
        read_examples(path)


def test_invalid_utf8_names_the_line_unless_replaced(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_bytes(b"ham\thello\nspam\tcaf\xe9 now\n")
    with pytest.raises(
        CorpusError, match=r"d\.tsv is not valid UTF-8 \(byte 0xe9 at offset 18\) on line 2.*--replace-invalid"
    ):
        read_examples(path)
    assert read_examples(path, options=ReadOptions("replace")).texts[1] == "caf\ufffd now"


def test_a_binary_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20)
    with pytest.raises(CorpusError, match=r"looks binary.*--allow-binary"):
        read_examples(path)


def test_a_single_label_is_refused_for_training(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text("ham\thello\nham\tbye\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"has only one label \('ham'\); a classifier needs examples of at least two"):
        require_classes(read_examples(path), path)


def test_an_empty_class_is_named(tmp_path: Path) -> None:
    folders = write_layout("folders", tmp_path / "folders")
    (folders / "greek").mkdir()
    with pytest.raises(CorpusError, match=r"label 'greek' \(.*greek\) holds no examples"):
        read_examples(folders)
    files = write_layout("files", tmp_path / "files")
    (files / "greek.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"label 'greek' \(.*greek\.txt\) holds no examples"):
        read_examples(files)


def test_an_empty_example_file_is_named(tmp_path: Path) -> None:
    folders = write_layout("folders", tmp_path)
    (folders / "latin" / "blank.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"blank\.txt is empty; each file in a label folder is one example"):
        read_examples(folders)


def test_missing_path_and_wrong_layout_for_the_path_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        read_examples(tmp_path / "nowhere.tsv")
    with pytest.raises(CorpusError, match="is a folder; --data-format tsv needs a file"):
        read_examples(tmp_path, "tsv")
    plain = tmp_path / "notes.txt"
    plain.write_text("just a sentence\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"cannot tell the layout of .*notes\.txt.*--data-format tsv or jsonl"):
        read_examples(plain)


def test_hold_out_is_stratified_seeded_and_disjoint() -> None:
    examples = Examples([f"t{i}" for i in range(100)], ["a"] * 80 + ["b"] * 20)
    kept, held = hold_out(examples, 0.2, seed=3, purpose="test")
    assert held.counts() == {"a": 16, "b": 4} and kept.counts() == {"a": 64, "b": 16}
    assert set(kept.texts).isdisjoint(held.texts)
    assert hold_out(examples, 0.2, seed=3, purpose="test")[1] == held
    assert hold_out(examples, 0.2, seed=4, purpose="test")[1] != held


def test_too_few_examples_of_a_class_to_hold_out_is_an_error() -> None:
    examples = Examples(["x", "y", "z"], ["a", "a", "b"])
    with pytest.raises(CorpusError, match=r"label 'b' has only 1 example: too few to hold out test examples"):
        hold_out(examples, 0.2, seed=0, purpose="test")
