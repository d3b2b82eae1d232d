from pathlib import Path

import pytest

from chargen.data.corpus import FILE_SEPARATOR, ReadOptions, looks_binary, read_corpus, split_validation
from chargen.errors import CorpusError


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_reads_a_utf8_file(tmp_path: Path) -> None:
    assert read_corpus(write(tmp_path / "a.txt", "héllo 世界\n".encode())) == "héllo 世界\n"


def test_folder_joins_text_files_in_sorted_order_and_skips_hidden_and_binary(tmp_path: Path) -> None:
    write(tmp_path / "b.txt", b"second\n")
    write(tmp_path / "a.txt", b"first\n")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "c.md", b"third\n")
    write(tmp_path / ".hidden.txt", b"secret\n")
    write(tmp_path / "image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert read_corpus(tmp_path) == FILE_SEPARATOR.join(["first", "second", "third"]) + "\n"


def test_invalid_utf8_names_file_and_byte_offset(tmp_path: Path) -> None:
    path = write(tmp_path / "latin1.txt", "café au lait".encode("latin-1"))
    message = r"latin1.txt is not valid UTF-8 \(byte 0xe9 at offset 3\).*--replace-invalid"
    with pytest.raises(CorpusError, match=message):
        read_corpus(path)


def test_replace_flag_turns_invalid_bytes_into_replacement_characters(tmp_path: Path) -> None:
    path = write(tmp_path / "latin1.txt", "café".encode("latin-1"))
    assert read_corpus(path, ReadOptions(errors="replace")) == "caf\ufffd"


def test_binary_file_is_refused_unless_forced(tmp_path: Path) -> None:
    path = write(tmp_path / "prog", b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00" + b"abc" * 100)
    with pytest.raises(CorpusError, match=r"looks binary.*--allow-binary"):
        read_corpus(path)
    assert read_corpus(path, ReadOptions(allow_binary=True)).startswith("\x7fELF")


def test_text_with_tabs_and_escapes_is_not_binary() -> None:
    assert not looks_binary(b"col1\tcol2\r\n\x1b[1mbold\x1b[0m\n" * 50)


def test_bom_is_stripped(tmp_path: Path) -> None:
    assert read_corpus(write(tmp_path / "bom.txt", b"\xef\xbb\xbfhello\n")) == "hello\n"


def test_crlf_and_lone_cr_become_lf_unless_kept(tmp_path: Path) -> None:
    path = write(tmp_path / "dos.txt", b"one\r\ntwo\rthree\n")
    assert read_corpus(path) == "one\ntwo\nthree\n"
    assert read_corpus(path, ReadOptions(normalize_newlines=False)) == "one\r\ntwo\rthree\n"


@pytest.mark.parametrize("content", [b"", b"  \n\t\n"])
def test_empty_or_blank_file_is_an_error(tmp_path: Path, content: bytes) -> None:
    with pytest.raises(CorpusError, match="is empty"):
        read_corpus(write(tmp_path / "empty.txt", content))


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        read_corpus(tmp_path / "nope.txt")


def test_folder_without_text_files_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "blob.bin", b"\x00\x01\x02" * 10)
    with pytest.raises(CorpusError, match="holds no text files"):
        read_corpus(tmp_path)


def test_validation_is_the_contiguous_tail() -> None:
    train, val = split_validation("abcdefghij", 0.2)
    assert (train, val) == ("abcdefgh", "ij")
