from pathlib import Path

import pytest

from chargen.data.corpus import FILE_SEPARATOR, ReadOptions, looks_binary, open_corpus, read_corpus, split_validation
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


# --- streaming: every split across reads comes out as if the file were read at once --------------

SPLITS = "日本語 ünïcödé\r\ncarriage\rreturn\r\n\r\nend 😀\n".encode()


def streamed(path: Path, chunk_bytes: int, options: ReadOptions | None = None) -> list[str]:
    return list(open_corpus(path, options or ReadOptions()).chunks(chunk_bytes=chunk_bytes))


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 7])
def test_chunks_split_characters_crlf_and_bom_like_one_read(tmp_path: Path, chunk_bytes: int) -> None:
    path = write(tmp_path / "mixed.txt", b"\xef\xbb\xbf" + SPLITS * 3)
    whole = SPLITS.decode().replace("\r\n", "\n").replace("\r", "\n") * 3
    pieces = streamed(path, chunk_bytes)
    assert "".join(pieces) == whole
    assert len(pieces) > 10  # the reads really were small
    kept = "".join(streamed(path, chunk_bytes, ReadOptions(normalize_newlines=False)))
    assert kept == SPLITS.decode() * 3


@pytest.mark.parametrize("chunk_bytes", [1, 3, 4096])
def test_invalid_byte_offset_and_line_are_exact_across_chunks(tmp_path: Path, chunk_bytes: int) -> None:
    data = b"\xef\xbb\xbf" + "ligne un\nligne deux é\n".encode() + b"caf\xe9\n"
    path = write(tmp_path / "bad.txt", data)
    with pytest.raises(
        CorpusError, match=rf"bad.txt is not valid UTF-8 \(byte 0xe9 at offset {len(data) - 2}\) on line 3"
    ):
        streamed(path, chunk_bytes)
    assert "".join(streamed(path, chunk_bytes, ReadOptions(errors="replace"))).endswith("caf\ufffd\n")


def test_character_cut_by_the_end_of_a_file_is_an_error_at_its_first_byte(tmp_path: Path) -> None:
    path = write(tmp_path / "cut.txt", "abc日".encode()[:-1])
    with pytest.raises(CorpusError, match=r"byte 0xe6 at offset 3"):
        streamed(path, 2)


def test_folder_streamed_in_small_chunks_equals_the_joined_files(tmp_path: Path) -> None:
    write(tmp_path / "b.txt", "sécond\r\n\r\n\n".encode())
    write(tmp_path / "a.txt", b"\xef\xbb\xbffirst\r")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "c.txt", "日本\n".encode())
    expected = FILE_SEPARATOR.join(["first", "sécond", "日本"]) + "\n"
    assert "".join(streamed(tmp_path, 1)) == expected == read_corpus(tmp_path)


def test_a_file_that_grows_while_it_is_read_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "log.txt", b"line\n" * 1000)
    chunks = open_corpus(path).chunks(chunk_bytes=512)
    next(chunks)
    with path.open("ab") as f:
        f.write(b"appended\n")
    with pytest.raises(CorpusError, match=r"log\.txt changed while chargen was reading it"):
        list(chunks)


def test_a_file_that_shrinks_between_listing_and_reading_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "log.txt", b"line\n" * 1000)
    corpus = open_corpus(path)
    write(path, b"line\n" * 10)
    with pytest.raises(CorpusError, match=r"changed while chargen was reading it \(it had 5,000 bytes, now 50\)"):
        list(corpus.chunks())


def test_fingerprint_changes_when_a_file_is_touched_or_added(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", b"alpha\n")
    before = open_corpus(tmp_path).fingerprint()
    assert open_corpus(tmp_path).fingerprint() == before
    write(tmp_path / "b.txt", b"beta\n")
    assert open_corpus(tmp_path).fingerprint() != before


def test_a_hundred_thousand_small_files_are_read_in_sorted_order(tmp_path: Path) -> None:
    count = 100_000
    names = [f"d{i % 7}/f{i:06d}.txt" for i in range(count)]
    for d in range(7):
        (tmp_path / f"d{d}").mkdir()
    for i, name in enumerate(reversed(names)):  # created out of order
        (tmp_path / name).write_bytes(b"%d\n" % (count - 1 - i))
    corpus = open_corpus(tmp_path)
    assert len(corpus.files) == count
    text = "".join(corpus.chunks())
    numbers = [int(n) for n in text.split()]
    expected = sorted(range(count), key=lambda i: (i % 7, i))
    assert numbers == expected
