"""Every format and container a user brings, normalised to one canonical row per kind; every
malformed input refused with file, line (or row) and field; streaming in bounded memory; and the
real GSM8K and hh-rlhf files read cleanly."""

import csv
import gzip
import json
from pathlib import Path

import pytest

from tuneops.data.formats import FORMATS, MAX_LINE_BYTES, detect_format, iter_rows, read_rows
from tuneops.errors import InvalidInput

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"  # ../shared/data beside the repo
GSM8K = SHARED / "gsm8k" / "train.jsonl"
HH = SHARED / "hh-rlhf-harmless" / "test.jsonl.gz"

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Où est le café?"},
                     {"role": "assistant", "content": "Ici."}]}
ALPACA = {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}
SFT_ALPACA = [{"role": "user", "content": "Translate to French.\n\nGood morning"},
              {"role": "assistant", "content": "Bonjour"}]


def _jsonl(path: Path, rows, *, raw_lines=()) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + list(raw_lines)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _gzip(path: Path, target: Path | None = None) -> Path:
    target = target or path.with_name(path.name + ".gz")
    target.write_bytes(gzip.compress(path.read_bytes()))
    return target


def _refused(path, **kw) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        read_rows(path, **kw)
    assert str(path) in info.value.message
    return info.value


def _problems(path, **kw) -> list[tuple[str, list[str]]]:
    result = read_rows(path, on_error="quarantine", **kw)
    return [(where, problems) for where, _, problems in result.bad]


# ---------------------------------------------------------------------------------------------- formats


def test_chat_with_tool_calls_and_tool_turns_is_normalised(tmp_path):
    row = {"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "call_1", "name": "weather", "content": "{\"temp_c\": 21}"},
        {"role": "assistant", "content": "21 °C and sunny."}],
        "source": "crm", "license": "CC-BY-4.0", "tags": ["tools"], "subject": "u-17"}
    result = read_rows(_jsonl(tmp_path / "tools.jsonl", [row, CHAT]))
    assert (result.kind, result.format, result.bad) == ("sft", "chat", [])
    first = result.rows[0]
    assert first["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]}
    assert first["messages"][2] == {"role": "tool", "content": "{\"temp_c\": 21}", "tool_call_id": "call_1",
                                    "name": "weather"}
    assert first["meta"] == {"source": "crm", "license": "CC-BY-4.0", "subject": "u-17", "tags": ["tools"]}
    assert result.rows[1] == {"messages": CHAT["messages"]}  # no provenance columns: no meta key


def test_alpaca_keeps_input_and_system(tmp_path):
    rows = [ALPACA, {"instruction": "Say hi.", "input": "", "output": "hi", "system": "You are kind.",
                     "license": "MIT"},
            {"instruction": "Say bye.", "input": None, "output": "bye"}]
    result = read_rows(_jsonl(tmp_path / "alpaca.jsonl", rows))
    assert (result.kind, result.format) == ("sft", "alpaca")
    assert result.rows[0] == {"messages": SFT_ALPACA}
    assert result.rows[1] == {"messages": [{"role": "system", "content": "You are kind."},
                                           {"role": "user", "content": "Say hi."},
                                           {"role": "assistant", "content": "hi"}], "meta": {"license": "MIT"}}
    assert result.rows[2]["messages"][0] == {"role": "user", "content": "Say bye."}


def test_prompt_completion_as_strings_and_as_chat_lists(tmp_path):
    rows = [{"prompt": "2+2?", "completion": "4"},
            {"prompt": [{"role": "system", "content": "Math."}, {"role": "user", "content": "3+3?"}],
             "completion": [{"role": "assistant", "content": "6"}]}]
    result = read_rows(_jsonl(tmp_path / "pc.jsonl", rows))
    assert result.format == "prompt_completion" and result.kind == "sft"
    assert result.rows[0]["messages"] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert [m["role"] for m in result.rows[1]["messages"]] == ["system", "user", "assistant"]


def test_preference_pairs_as_strings_lists_and_with_the_prompt_repeated(tmp_path):
    prompt = [{"role": "user", "content": "Capital of France?"}]
    rows = [{"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
            {"prompt": prompt, "chosen": [{"role": "assistant", "content": "Paris."}],
             "rejected": [{"role": "assistant", "content": "Lyon."}], "tier": "gold"},
            # UltraFeedback-style export: chosen/rejected repeat the prompt turns before the reply
            {"prompt": "Capital of France?", "chosen": prompt + [{"role": "assistant", "content": "Paris."}],
             "rejected": prompt + [{"role": "assistant", "content": "Lyon."}]}]
    result = read_rows(_jsonl(tmp_path / "pref.jsonl", rows))
    assert (result.kind, result.format) == ("preference", "preference")
    expected = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "Paris."}],
                "rejected": [{"role": "assistant", "content": "Lyon."}]}
    assert result.rows[0] == expected and result.rows[2] == expected
    assert result.rows[1] == {**expected, "meta": {"tier": "gold"}}


def _hh(*turns) -> str:
    return "".join(f"\n\n{role}: {text}" for role, text in turns)


def test_hh_rlhf_transcripts_split_into_turns_with_the_shared_prefix_as_prompt(tmp_path):
    shared = [("Human", "Hi"), ("Assistant", "Hello!"), ("Human", "How do I pick a lock?")]
    row = {"chosen": _hh(*shared, ("Assistant", "I can't help with that.")),
           "rejected": _hh(*shared, ("Assistant", "Use a tension wrench."))}
    result = read_rows(_jsonl(tmp_path / "hh.jsonl", [row]))
    assert (result.kind, result.format) == ("preference", "hh_rlhf")
    assert result.rows[0] == {
        "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                   {"role": "user", "content": "How do I pick a lock?"}],
        "chosen": [{"role": "assistant", "content": "I can't help with that."}],
        "rejected": [{"role": "assistant", "content": "Use a tension wrench."}]}


def test_hh_rlhf_pairs_that_do_not_share_a_human_prefix_are_refused_by_line(tmp_path):
    good = {"chosen": _hh(("Human", "q"), ("Assistant", "a")), "rejected": _hh(("Human", "q"), ("Assistant", "b"))}
    rows = [good,
            {"chosen": _hh(("Human", "q1"), ("Assistant", "a")), "rejected": _hh(("Human", "q2"), ("Assistant", "b"))},
            {"chosen": _hh(("Human", "q"), ("Assistant", "a"), ("Human", "more?")),
             "rejected": _hh(("Human", "q"), ("Assistant", "b"))},
            {"chosen": good["chosen"], "rejected": good["chosen"]},
            {"chosen": "Assistant: hi", "rejected": good["rejected"]}]
    f = _jsonl(tmp_path / "hh.jsonl", rows)
    bad = dict(_problems(f))
    assert set(bad) == {f"{f}:2", f"{f}:3", f"{f}:4", f"{f}:5"}
    assert "do not share a prefix ending in a Human turn" in bad[f"{f}:2"][0]
    assert "chosen: turn 3 is a Human turn after the shared prompt" in bad[f"{f}:3"][0]
    assert "same transcript" in bad[f"{f}:4"][0]
    assert "chosen: is not an hh-rlhf transcript: it must start with 'Human:'" in bad[f"{f}:5"][0]
    err = _refused(f)
    assert f"{f}:2: chosen, rejected: the transcripts do not share a prefix ending in a Human turn" in err.message


def test_implicit_prompt_preference_as_message_lists(tmp_path):
    q = {"role": "user", "content": "q"}
    row = {"chosen": [q, {"role": "assistant", "content": "good"}],
           "rejected": [q, {"role": "assistant", "content": "bad"}]}
    result = read_rows(_jsonl(tmp_path / "implicit.jsonl", [row]))
    assert result.format == "hh_rlhf"
    assert result.rows[0] == {"prompt": [q], "chosen": [{"role": "assistant", "content": "good"}],
                              "rejected": [{"role": "assistant", "content": "bad"}]}


def test_gsm8k_keeps_the_final_answer_line(tmp_path):
    row = {"question": "Tom has 3 apples and buys 2. How many?", "answer": "3 + 2 = <<3+2=5>>5\n#### 5"}
    result = read_rows(_jsonl(tmp_path / "gsm.jsonl", [row]))
    assert (result.kind, result.format) == ("sft", "gsm8k")
    assert result.rows[0]["messages"] == [{"role": "user", "content": row["question"]},
                                          {"role": "assistant", "content": row["answer"]}]


# ---------------------------------------------------------------------------------------------- containers


def test_json_array_streams_items_with_their_line_numbers(tmp_path):
    f = tmp_path / "rows.json"
    f.write_text(json.dumps([ALPACA, {"instruction": 5, "output": "x"}, ALPACA], indent=2))
    result = read_rows(f, on_error="quarantine")
    assert result.format == "alpaca" and result.rows == [{"messages": SFT_ALPACA}] * 2
    [(where, _, problems)] = result.bad
    assert where == f"{f}:7 (item 2)"  # the pretty-printed second object opens on line 7
    assert problems == ["instruction: must be a string, got a number (5); write it as a JSON string"]
    assert detect_format(f).container == "json"


def test_json_array_items_larger_than_a_read_chunk(tmp_path):
    big = {"instruction": "x" * 3_000_000, "output": "é" * 1_500_000}
    f = tmp_path / "big.json"
    f.write_text(json.dumps([big, ALPACA, big], ensure_ascii=False))
    rows = read_rows(f).rows
    assert len(rows) == 3 and rows[2]["messages"][1]["content"] == "é" * 1_500_000


def test_json_array_item_over_the_limit_is_refused(tmp_path):
    f = tmp_path / "big.json"
    f.write_text(json.dumps([ALPACA, {"instruction": "x" * 3_000_000, "output": "y"}]))
    err = _refused(f, max_line_bytes=2_000_000)
    assert f"{f}:1 (item 2): the item is over the limit of 2,000,000 bytes (1.91 MiB)" in err.message


def test_csv_with_header_json_chat_cells_and_quoted_newlines(tmp_path):
    f = tmp_path / "rows.csv"
    with open(f, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["instruction", "input", "output", "license"])
        w.writerow(["Summarise.", "line one\nline two", "two lines", "MIT"])
        w.writerow(["Say hi.", "", "hi", ""])
        w.writerow(["", "", "", ""])
        w.writerow(["Count.", "", "", "MIT"])
    result = read_rows(f, on_error="quarantine")
    assert result.format == "alpaca"
    assert result.rows[0] == {"messages": [{"role": "user", "content": "Summarise.\n\nline one\nline two"},
                                           {"role": "assistant", "content": "two lines"}], "meta": {"license": "MIT"}}
    assert result.rows[1] == {"messages": [{"role": "user", "content": "Say hi."},
                                           {"role": "assistant", "content": "hi"}]}  # empty cell = absent
    [(where, _, problems)] = result.bad
    assert where == f"{f}:line 6"  # the quoted newline makes record 1 span lines 2-3
    assert problems[0].startswith("output: missing (or null)")

    chat = tmp_path / "chat.csv"
    with open(chat, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["messages", "source"])
        w.writerow([json.dumps(CHAT["messages"]), "forms"])
        w.writerow(["not json", "forms"])
    result = read_rows(chat, on_error="quarantine")
    assert result.rows == [{"messages": CHAT["messages"], "meta": {"source": "forms"}}]
    assert result.bad[0][0] == f"{chat}:line 3" and result.bad[0][2][0].startswith("messages: a CSV cell")

    pref = tmp_path / "pref.tsv"
    pref.write_text("prompt\tchosen\trejected\n" + "\t".join(
        ["Capital?", json.dumps([{"role": "assistant", "content": "Paris"}]), "Lyon"]) + "\n")
    row = read_rows(pref).rows[0]
    assert row["chosen"] == [{"role": "assistant", "content": "Paris"}]
    assert row["rejected"] == [{"role": "assistant", "content": "Lyon"}]


def test_parquet_by_record_batches_with_nested_messages(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": CHAT["messages"], "license": "MIT"},
            {"messages": [{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": None, "tool_calls": [
                              {"type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                          {"role": "tool", "content": "ok", "tool_call_id": "c1"},
                          {"role": "assistant", "content": "done"}], "license": None}]
    f = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows * 1500), f, row_group_size=700)
    result = read_rows(f)
    assert (result.format, len(result.rows)) == ("chat", 3000)
    assert result.rows[0] == {"messages": CHAT["messages"], "meta": {"license": "MIT"}}
    # Arrow fills absent struct fields with null; those are read as absent, not as unknown keys
    assert result.rows[1] == {"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "content": "ok", "tool_call_id": "c1"},
        {"role": "assistant", "content": "done"}]}
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q", "answer": "a"}, {"question": "q", "answer": None}]), bad)
    assert _problems(bad) == [(f"{bad}:row 2", [
        "answer: missing (or null); the gsm8k format needs question, answer and this row has question"])]
    mixed = tmp_path / "mixed.parquet"  # a union of two formats' columns: each row is judged by its non-null cells
    blank = {"messages": None, "instruction": None, "input": None, "output": None}
    pq.write_table(pa.Table.from_pylist([{**blank, **r} for r in (CHAT, ALPACA, CHAT)]), mixed)
    assert detect_format(mixed).format == "chat"
    assert _problems(mixed) == [(f"{mixed}:row 2", [
        f"looks like alpaca (instruction, output) while {mixed}:row 1 was chat (messages); one file holds one "
        "format: split it by format, or pass format= to read every row as one format"])]


@pytest.mark.parametrize("container", ["jsonl", "json", "csv", "parquet"])
def test_gzip_of_every_container_is_recognised_by_its_bytes(tmp_path, container):
    import pyarrow as pa
    import pyarrow.parquet as pq

    plain = tmp_path / f"rows.{container}"
    if container == "jsonl":
        _jsonl(plain, [ALPACA, ALPACA])
    elif container == "json":
        plain.write_text(json.dumps([ALPACA, ALPACA]))
    elif container == "csv":
        plain.write_text("instruction,input,output\n" + "Translate to French.,Good morning,Bonjour\n" * 2)
    else:
        pq.write_table(pa.Table.from_pylist([ALPACA, ALPACA]), plain)
    packed = _gzip(plain, tmp_path / "upload.bin")  # no telling extension
    guess = detect_format(packed)
    assert (guess.container, guess.compression, guess.format, guess.kind) == (container, "gzip", "alpaca", "sft")
    assert "gzip-compressed" in guess.reason
    assert read_rows(packed).rows == [{"messages": SFT_ALPACA}] * 2


def test_saved_datasets_directory_and_split_choice(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{**CHAT, "source": "hub"}] * 3)
    ds.save_to_disk(str(tmp_path / "one"))
    result = read_rows(tmp_path / "one")
    assert (result.format, len(result.rows)) == ("chat", 3)
    assert result.rows[0] == {"messages": CHAT["messages"], "meta": {"source": "hub"}}
    assert detect_format(tmp_path / "one").container == "hf_dataset"

    dd = datasets.DatasetDict(train=datasets.Dataset.from_list([ALPACA] * 4),
                              test=datasets.Dataset.from_list([{**ALPACA, "output": 7}]))
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(read_rows(tmp_path / "dd", split="train").rows) == 4
    with pytest.raises(InvalidInput) as info:
        read_rows(tmp_path / "dd")
    assert "holds the splits train, test" in info.value.message and "split=" in info.value.hint
    with pytest.raises(InvalidInput, match="has no split 'validation'"):
        read_rows(tmp_path / "dd", split="validation")
    err = _refused(tmp_path / "dd", split="test")
    assert f"{tmp_path / 'dd' / 'test'}:row 1: output: must be a string" in err.message
    with pytest.raises(InvalidInput, match="not one written by `datasets`"):
        read_rows(tmp_path)
    with pytest.raises(InvalidInput, match="split= picks a split"):
        read_rows(_jsonl(tmp_path / "a.jsonl", [ALPACA]), split="train")


# ---------------------------------------------------------------------------------------------- detection


def test_detection_names_format_container_and_reason(tmp_path):
    for name, row in [("chat", CHAT), ("alpaca", ALPACA), ("prompt_completion", {"prompt": "p", "completion": "c"}),
                      ("gsm8k", {"question": "q", "answer": "a"}),
                      ("preference", {"prompt": "p", "chosen": "a", "rejected": "b"}),
                      ("hh_rlhf", {"chosen": _hh(("Human", "q"), ("Assistant", "a")),
                                   "rejected": _hh(("Human", "q"), ("Assistant", "b"))})]:
        f = _jsonl(tmp_path / f"{name}.jsonl", [row])
        guess = detect_format(f)
        assert (guess.format, guess.kind, guess.container, guess.compression) == (
            name, FORMATS[name].kind, "jsonl", None)
        assert f"{f}:1 has" in guess.reason


def test_detection_skips_a_broken_first_line(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text("{broken\n" + json.dumps(ALPACA) + "\n")
    assert detect_format(f).format == "alpaca"
    assert _problems(f)[0][0] == f"{f}:1"


def test_no_format_fits_lists_the_columns_and_the_closest_format(tmp_path):
    f = _jsonl(tmp_path / "odd.jsonl", [{"instruction": "x", "response": "y"}])
    with pytest.raises(InvalidInput) as info:
        detect_format(f)
    msg = info.value.message
    assert f"{f}:1: no known format fits the column(s) instruction, response" in msg
    assert "alpaca (has instruction, missing output)" in msg and "format=NAME" in info.value.hint


def test_format_override_reads_every_row_as_that_format(tmp_path):
    f = _jsonl(tmp_path / "mixed.jsonl", [CHAT, ALPACA, ALPACA])
    assert detect_format(f).format == "chat"
    result = read_rows(f, format="alpaca", on_error="quarantine")
    assert result.format == "alpaca" and len(result.rows) == 2
    [(where, _, problems)] = result.bad
    assert where == f"{f}:1"
    assert problems == ["looks like chat (messages) while format='alpaca' was given; one file holds one format: "
                        "split it by format, or pass format= to read every row as one format"]
    with pytest.raises(InvalidInput, match="format='sharegpt' is not a known format"):
        read_rows(f, format="sharegpt")


def test_ambiguous_rows_are_not_used_for_detection(tmp_path):
    both = {"question": "q", "answer": "a", "instruction": "i", "output": "o"}
    f = _jsonl(tmp_path / "both.jsonl", [both])
    with pytest.raises(InvalidInput) as info:
        detect_format(f)
    assert f"{f}:1: the columns fit more than one format (alpaca: " in info.value.message
    assert "and gsm8k: question, answer); pass format= to choose" in info.value.message
    g = _jsonl(tmp_path / "then.jsonl", [both, {"question": "q", "answer": "a"}])
    guess = detect_format(g)
    assert guess.format == "gsm8k" and f"{g}:2 has question, answer" in guess.reason
    bad = _problems(g)
    assert bad[0][0] == f"{g}:1"
    assert "unknown column(s) 'instruction' (used by alpaca), 'output' (used by alpaca)" in bad[0][1][0]


# ---------------------------------------------------------------------------------------------- malformed input


def test_empty_and_blank_files_are_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert "the file is empty" in _refused(empty).message
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n\n")
    assert "holds no rows" in _refused(blank).message
    gz_empty = tmp_path / "empty.gz"
    gz_empty.write_bytes(gzip.compress(b""))
    assert "empty once decompressed" in _refused(gz_empty).message
    arr = tmp_path / "empty.json"
    arr.write_text("[]")
    assert "holds no rows" in _refused(arr).message
    header_only = tmp_path / "header.csv"
    header_only.write_text("instruction,input,output\n")
    assert "holds no rows" in _refused(header_only).message


def test_invalid_utf8_names_line_and_byte_offset(tmp_path):
    f = tmp_path / "latin1.jsonl"
    good, bad = (json.dumps(ALPACA) + "\n").encode(), (json.dumps({**ALPACA, "output": "café"}, ensure_ascii=False)
                                                      + "\n").encode("latin-1")
    f.write_bytes(good + bad + good)
    err = _refused(f)
    offset = len(good) + bad.index(b"\xe9")
    assert f"{f}:2: not valid UTF-8: byte 0xe9 at byte offset {offset:,}" in err.message
    assert "re-save the file as UTF-8" in err.hint and "iconv" in err.hint
    assert len(read_rows(f, on_error="quarantine").rows) == 2  # the bad line is isolated

    csv_file = tmp_path / "latin1.csv"
    csv_file.write_bytes(b"instruction,output\nSay hi,hi\nSay caf\xe9,caf\xe9\n")
    err = _refused(csv_file)
    assert f"{csv_file}:line 3: not valid UTF-8: byte 0xe9" in err.message

    arr = tmp_path / "latin1.json"
    arr.write_bytes(b'[\n{"question": "q", "answer": "a"},\n{"question": "caf\xe9", "answer": "a"}]')
    assert f"{arr}:3: not valid UTF-8: byte 0xe9" in _refused(arr).message


def test_utf8_bom_is_accepted_silently_and_crlf_too(tmp_path):
    for name, body in [("bom.jsonl", (json.dumps(ALPACA) + "\r\n") * 2),
                       ("bom.json", json.dumps([ALPACA, ALPACA], indent=1).replace("\n", "\r\n")),
                       ("bom.csv", "instruction,input,output\r\n"
                        + "Translate to French.,Good morning,Bonjour\r\n" * 2)]:
        f = tmp_path / name
        f.write_bytes(b"\xef\xbb\xbf" + body.encode())
        assert read_rows(f).rows == [{"messages": SFT_ALPACA}] * 2, name
        assert "byte-order mark skipped" in detect_format(f).reason
        assert read_rows(_gzip(f)).rows == [{"messages": SFT_ALPACA}] * 2, name


def test_wide_encodings_and_other_compressions_are_refused_with_the_fix(tmp_path):
    f = tmp_path / "wide.jsonl"
    f.write_bytes((json.dumps(ALPACA) + "\n").encode("utf-16"))
    err = _refused(f)
    assert "encoded as UTF-16-LE, not UTF-8" in err.message and "iconv" in err.hint
    z = tmp_path / "rows.jsonl.bz2"
    z.write_bytes(b"BZh91AY&SY" + b"\x00" * 20)
    err = _refused(z)
    assert "bzip2-compressed" in err.message and "bunzip2" in err.hint


def test_truncated_gzip_names_the_line_it_stops_in(tmp_path):
    plain = _jsonl(tmp_path / "rows.jsonl", [{"question": f"q{i} " + "x" * 50, "answer": str(i)} for i in range(5000)])
    data = gzip.compress(plain.read_bytes())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    err = _refused(cut)
    assert "gzip data is truncated" in err.message and "inside line" in err.message
    assert f"gzip -t {cut}" in err.hint
    seen = []
    with pytest.raises(InvalidInput):  # streaming readers get the good rows first, then the error
        for r in iter_rows(cut):
            seen.append(r)
    assert 0 < len(seen) < 5000 and all(r.ok for r in seen)
    tiny = tmp_path / "tiny.gz"
    tiny.write_bytes(gzip.compress(json.dumps(ALPACA).encode())[:-12])
    assert "truncated" in _refused(tiny).message


def test_a_line_over_the_limit_is_refused_by_line_without_reading_it_whole(tmp_path):
    import tracemalloc

    f = tmp_path / "huge.jsonl"
    with open(f, "w") as fh:
        fh.write(json.dumps(ALPACA) + "\n")
        fh.write('{"instruction": "' + "x" * (50 * 1024 * 1024) + '", "output": "y"}\n')  # a 50 MB line
        fh.write(json.dumps(ALPACA) + "\n")
    limit = 4 * 1024 * 1024
    tracemalloc.start()
    try:
        result = read_rows(f, on_error="quarantine", max_line_bytes=limit)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(result.rows) == 2
    [(where, excerpt, problems)] = result.bad
    assert where == f"{f}:2" and excerpt.startswith('{"instruction": "xxx')
    assert f"over the limit of {limit:,} bytes (4 MiB)" in problems[0]
    assert peak < 3 * limit  # the 50 MB line never sat in memory
    err = _refused(f)  # the default limit refuses a 50 MB line too
    size = f.stat().st_size - 2 * len(json.dumps(ALPACA) + "\n")
    assert f"{f}:2: the line is {size:,} bytes, over the limit of {MAX_LINE_BYTES:,} bytes" in err.message


def test_wrong_types_name_line_and_field(tmp_path):
    f = _jsonl(tmp_path / "types.jsonl", [
        CHAT,
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 42}]},
        {"messages": "user: hi"},
        {"messages": [{"role": "gpt", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": "{not json"}}]}]},
        {"messages": [{"role": "user", "content": "q"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"},
                      {"role": "assistant", "content": "a"}]},
    ], raw_lines=['["a", "list"]', "{"])
    err = _refused(f)
    msg = err.message
    assert "9 bad row(s)" in msg and "nothing was read" in msg and "quarantine" in err.hint
    assert f"{f}:2: messages[1].content: must be a string, got a number (42)" in msg
    assert f"{f}:3: messages: must be a list of {{role, content}} objects, got a string ('user: hi')" in msg
    assert f"{f}:4: messages[0].role: is 'gpt'; write 'assistant' for it" in msg
    assert f"{f}:5: messages[1]: unknown key(s) 'weight'; assistant messages take role, content, tool_calls" in msg
    assert f"{f}:6: messages[1].tool_calls[0].function.arguments: is not valid JSON" in msg
    assert f"{f}:7: messages[0].role: is 'user'; the last message must be the assistant's answer" in msg
    assert f"{f}:8: messages[1]: a tool result with no assistant tool call before it" in msg
    assert f"{f}:9: expected an object (one row with named fields), got a list" in msg
    assert f"{f}:10: not valid JSON" in msg and "pretty-printed JSON" in msg

    g = _jsonl(tmp_path / "gsm.jsonl", [{"question": "q", "answer": 72}])
    assert f"{g}:1: answer: must be a string, got a number (72); write it as a JSON string" in _refused(g).message


def test_at_most_ten_problems_are_listed(tmp_path):
    f = _jsonl(tmp_path / "many.jsonl", [ALPACA] + [{"instruction": i, "output": "o"} for i in range(14)])
    msg = _refused(f).message
    assert "14 bad row(s)" in msg and f"{f}:11:" in msg and f"{f}:12:" not in msg and "… and 4 more" in msg


def test_lone_surrogate_names_line_and_field(tmp_path):
    f = _jsonl(tmp_path / "s.jsonl", [ALPACA], raw_lines=['{"instruction": "x", "output": "broken \\ud800 escape"}'])
    assert f"{f}:2: output: holds a lone surrogate \\ud800" in _refused(f).message
    c = tmp_path / "s.csv"
    c.write_text('messages\n"[{""role"": ""user"", ""content"": ""q""}, '
                 '{""role"": ""assistant"", ""content"": ""bad \\udc00""}]"\n')
    assert f"{c}:line 2: messages[1].content: holds a lone surrogate \\udc00" in _refused(c).message


def test_mixed_formats_in_one_file_name_the_line(tmp_path):
    f = _jsonl(tmp_path / "mixed.jsonl", [CHAT, CHAT, ALPACA, {"question": "q", "answer": "a"}])
    bad = dict(_problems(f))
    assert bad[f"{f}:3"] == [f"looks like alpaca (instruction, output) while {f}:1 was chat (messages); one file "
                             "holds one format: split it by format, or pass format= to read every row as one format"]
    assert bad[f"{f}:4"][0].startswith(f"looks like gsm8k (question, answer) while {f}:1 was chat")


def test_unknown_columns_are_listed_with_the_formats_they_fit(tmp_path):
    f = _jsonl(tmp_path / "extra.jsonl", [CHAT, {**CHAT, "id": 7, "instruction": "x"}])
    [(where, problems)] = _problems(f)
    assert where == f"{f}:2"
    assert problems[0].startswith("unknown column(s) 'id' (used by no known format), 'instruction' (used by alpaca); "
                                  "the chat format takes messages plus provenance columns")


def test_parquet_and_csv_without_usable_columns_are_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "odd.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "a", "label": 1}]), p)
    err = _refused(p)
    assert f"{p}: no usable columns: no known format fits the column(s) label, text" in err.message
    c = tmp_path / "odd.csv"
    c.write_text("title,body\nhello,world\n")
    assert f"{c}: no usable columns" in _refused(c).message
    extra = tmp_path / "extra.parquet"
    pq.write_table(pa.Table.from_pylist([{**ALPACA, "id": 1}]), extra)
    err = _refused(extra)
    assert "unknown column(s) 'id', used by no known format; the alpaca format takes" in err.message
    assert "remove_columns" in err.hint
    wrong = tmp_path / "gsm.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q", "answer": "a"}]), wrong)
    assert "format='chat' needs column(s) messages" in _refused(wrong, format="chat").message
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(p.read_bytes()[:30])
    assert "cannot be read as Parquet" in _refused(broken).message


def test_quarantine_keeps_good_rows_and_the_bad_ones_with_reasons(tmp_path):
    f = _jsonl(tmp_path / "q.jsonl", [ALPACA, {"instruction": "i", "output": ["o"]}, ALPACA])
    result = read_rows(f, on_error="quarantine")
    assert len(result.rows) == 2
    assert result.bad == [(f"{f}:2", '{"instruction": "i", "output": ["o"]}',
                           ["output: must be a string, got a list; write it as a JSON string"])]
    all_bad = _jsonl(tmp_path / "allbad.jsonl", [{"instruction": 1, "output": "o"}])
    assert "none of the 1 row(s)" in _refused(all_bad, on_error="quarantine").message
    with pytest.raises(InvalidInput, match="on_error='skip' is not allowed"):
        read_rows(f, on_error="skip")


# ---------------------------------------------------------------------------------------------- streaming


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_200k_row_gzip_file_streams_in_bounded_memory(tmp_path):
    line = json.dumps({"messages": [{"role": "user", "content": "What is 2 + 2? " * 8},
                                    {"role": "assistant", "content": "4. " * 30}], "license": "CC0-1.0"}) + "\n"
    f = tmp_path / "big.jsonl.gz"
    with gzip.open(f, "wb", compresslevel=1) as fh:
        fh.write(line.encode() * 200_000)  # ~60 MB of JSON; read whole as rows it would take ~300 MB
    before = peak = _rss_mb()
    n = 0
    for result in iter_rows(f):
        assert result.row is not None
        n += 1
        if n % 10_000 == 0:
            peak = max(peak, _rss_mb())
    assert n == 200_000
    assert peak - before < 100, f"RSS grew {peak - before:.0f} MB while streaming"


# ---------------------------------------------------------------------------------------------- real data


@pytest.mark.skipif(not GSM8K.exists(), reason="shared GSM8K data not present")
def test_real_gsm8k_train_reads_cleanly_as_sft():
    guess = detect_format(GSM8K)
    assert (guess.format, guess.kind, guess.container, guess.compression) == ("gsm8k", "sft", "jsonl", None)
    result = read_rows(GSM8K)
    assert (result.kind, result.format, len(result.rows), result.bad) == ("sft", "gsm8k", 7473, [])
    first = result.rows[0]["messages"]
    assert first[0] == {"role": "user", "content": "Natalia sold clips to 48 of her friends in April, and then she "
                                                   "sold half as many clips in May. How many clips did Natalia sell "
                                                   "altogether in April and May?"}
    assert first[1]["role"] == "assistant" and first[1]["content"].endswith("\n#### 72")
    assert all(r["messages"][1]["content"].rsplit("\n", 1)[-1].startswith("#### ") for r in result.rows)


@pytest.mark.skipif(not HH.exists(), reason="shared hh-rlhf data not present")
def test_real_hh_rlhf_harmless_test_reads_cleanly_as_preference():
    guess = detect_format(HH)
    assert (guess.format, guess.kind, guess.container, guess.compression) == ("hh_rlhf", "preference", "jsonl", "gzip")
    result = read_rows(HH)
    assert (result.kind, result.format, len(result.rows), result.bad) == ("preference", "hh_rlhf", 2312, [])
    rows = result.rows
    assert all(r["prompt"][-1]["role"] == "user" and r["chosen"] != r["rejected"] for r in rows)
    assert all(m["role"] == "assistant" for r in rows for m in r["chosen"] + r["rejected"])
    first = rows[0]
    assert [m["role"] for m in first["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert first["prompt"][0]["content"] == "what are some pranks with a pen i can do?"
    assert first["chosen"] == [{"role": "assistant", "content": "No, sorry!  All of these involve a pen, the point "
                                "is that you can get funny results by doing pranks with pens."}]
    # Quirks of the real data, kept as written (quality filters judge them, not the reader):
    # lines 87, 517, 926 and 1104 prefer an empty reply; in lines 1255, 1689, 1953 (chosen), 1951 (rejected)
    # and 2037 (chosen) the compared reply holds a second "\n\nAssistant:" turn.
    assert [i + 1 for i, r in enumerate(rows) if r["chosen"][-1]["content"] == ""] == [87, 517, 926, 1104]
    assert [i + 1 for i, r in enumerate(rows) if len(r["chosen"]) + len(r["rejected"]) > 2] == [
        1255, 1689, 1951, 1953, 2037]
