"""Input files that are not plain UTF-8 JSONL: each is refused with a message naming the file (and
line), or accepted where the difference is harmless (UTF-8 BOM, CRLF) — and nothing is stored."""

import gzip
import json

import pytest

from tuneops.data.formats import read_rows
from tuneops.data.ingest import ingest_jsonl
from tuneops.errors import InvalidInput
from tuneops.store.schema import DatasetRecord

ROW = {"messages": [{"role": "user", "content": "Où est café?"}, {"role": "assistant", "content": "ici"}]}
LINE = json.dumps(ROW, ensure_ascii=False) + "\n"


def _read(path):
    return read_rows(path).rows


def _refused(path) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        _read(path)
    assert str(path) in info.value.message
    return info.value


def test_directory_is_refused(tmp_path):
    err = _refused(tmp_path)
    assert "is a directory" in err.message


def test_empty_file_is_refused(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_bytes(b"")
    assert "is empty" in _refused(f).message


def test_gzip_is_read_by_its_magic_bytes_and_a_truncated_one_is_refused(tmp_path):
    f = tmp_path / "rows.data"  # no .gz extension: the magic bytes decide
    f.write_bytes(gzip.compress(LINE.encode()))
    assert _read(f)[0]["messages"] == ROW["messages"]
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress((LINE * 200).encode())[:-30])
    err = _refused(cut)
    assert "gzip" in err.message and "truncated" in err.message.lower()


@pytest.mark.parametrize("encoding, expected", [
    ("utf-16", "UTF-16-LE"),      # with BOM (Python writes one)
    ("utf-16-be", "UTF-16-BE"),   # no BOM: recognised by its NUL bytes
    ("utf-32-le", "UTF-32-LE"),   # no BOM
    ("utf-32", "UTF-32-LE"),      # with BOM
])
def test_utf16_and_utf32_name_the_encoding_and_say_resave_as_utf8(tmp_path, encoding, expected):
    f = tmp_path / "wide.jsonl"
    f.write_bytes(LINE.encode(encoding))
    err = _refused(f)
    assert f"encoded as {expected}, not UTF-8" in err.message
    assert "re-save it as UTF-8" in err.hint


def test_latin1_names_file_line_and_byte_offset(tmp_path):
    f = tmp_path / "latin1.jsonl"
    good, bad = LINE.encode(), LINE.encode("latin-1")
    f.write_bytes(good + bad)
    err = _refused(f)
    offset = len(good) + bad.index(b"\xf9")  # 'ù' in Latin-1
    assert f"{f}:2: not valid UTF-8: byte 0xf9 at byte offset {offset}" in err.message
    assert "re-save the file as UTF-8" in err.hint


def test_lone_surrogate_names_file_line_and_field(tmp_path):
    f = tmp_path / "surrogate.jsonl"
    f.write_text(LINE + '{"messages": [{"role": "user", "content": "q"}, '
                        '{"role": "assistant", "content": "broken \\ud800 escape"}]}\n')
    err = _refused(f)
    assert f"{f}:2: messages[1].content: holds a lone surrogate \\ud800" in err.message


def test_utf8_bom_is_accepted_and_stripped(tmp_path):
    f = tmp_path / "bom.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + (LINE * 2).encode())
    rows = _read(f)
    assert len(rows) == 2 and rows[0]["messages"] == ROW["messages"]


def test_crlf_line_endings_are_accepted(tmp_path):
    f = tmp_path / "crlf.jsonl"
    f.write_bytes((LINE * 2).replace("\n", "\r\n").encode())
    rows = _read(f)
    assert [r["messages"] for r in rows] == [ROW["messages"]] * 2
    assert "\r" not in json.dumps(rows)


@pytest.mark.parametrize("content", [gzip.compress(LINE.encode()), LINE.encode("utf-16"),
                                     LINE.encode() + LINE.encode("latin-1"), b""],
                         ids=["gzip", "utf-16", "latin-1", "empty"])
def test_refused_files_write_nothing_to_the_store(sqlite_store, tmp_path, content):
    f = tmp_path / "in.jsonl"
    f.write_bytes(content)
    with pytest.raises(InvalidInput):
        ingest_jsonl(sqlite_store, f, name="refused")
    assert sqlite_store.all(DatasetRecord) == []
    blobs = sqlite_store.home / "blobs"
    assert not blobs.exists() or not any(p.is_file() for p in blobs.rglob("*"))
