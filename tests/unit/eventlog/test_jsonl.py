"""Torn-line-tolerant JSON lines: every line that is a JSON object is a row, every other line a `BadLine` naming
its file and line; a torn line costs only itself."""

import polars as pl

from recsys.eventlog.jsonl import LINE, MAX_TEXT, JsonlTail, parse_jsonl, read_jsonl

GOOD_1 = '{"event_id": 1, "item_id": 10}'
TORN = '{"event_id": 2, "timest'
GOOD_3 = '{"event_id": 3, "item_id": 30}'
ARRAY = "[4, 40]"
GOOD_6 = '{"event_id": 6, "item_id": 60}'


def test_a_torn_line_in_the_middle_and_at_the_end_cost_only_themselves(tmp_path):
    path = tmp_path / "feedback-a.jsonl"
    # lines: 1 good, 2 torn, 3 good, 4 an array, 5 blank, 6 good, 7 torn and without its newline
    path.write_text(f"{GOOD_1}\n{TORN}\n{GOOD_3}\n{ARRAY}\n\n{GOOD_6}\n" + '{"event_id": 7, "ite')
    rows, bad = read_jsonl(path)
    assert rows.to_dicts() == [{"event_id": 1, "item_id": 10, LINE: 1}, {"event_id": 3, "item_id": 30, LINE: 3},
                               {"event_id": 6, "item_id": 60, LINE: 6}]
    assert [(b.file, b.line, b.text) for b in bad] == [(str(path), 2, TORN), (str(path), 4, ARRAY),
                                                       (str(path), 7, '{"event_id": 7, "ite')]
    assert bad[0].reason.startswith("not JSON: ")
    assert bad[1].reason == "not a JSON object (a list)"
    assert bad[2].reason.startswith("not JSON (the file's last line, without a newline: its writer was interrupted)")


def test_a_last_line_without_newline_that_parses_is_a_row(tmp_path):
    path = tmp_path / "export.jsonl"
    path.write_text(f"{GOOD_1}\n{GOOD_3}")
    rows, bad = read_jsonl(path)
    assert bad == [] and rows[LINE].to_list() == [1, 2] and rows["event_id"].to_list() == [1, 3]


def test_an_unfinished_last_line_is_left_for_later_when_not_final():
    data = f"{GOOD_1}\n{TORN}".encode()
    rows, bad, used = parse_jsonl(data, "f", first_line=10, final=False)
    assert rows[LINE].to_list() == [10] and bad == []
    assert used == len(GOOD_1) + 1  # the torn line's bytes are not consumed


def test_a_bad_line_is_cut_for_reports_unless_all_of_it_is_asked_for(tmp_path):
    long = '{"event_id": 5, "note": "' + "x" * 2000  # torn: no closing quote or brace
    path = tmp_path / "long.jsonl"
    path.write_text(f"{GOOD_1}\n{long}\n")
    _, (cut,) = read_jsonl(path)
    _, (whole,) = read_jsonl(path, max_text=None)
    assert cut.text == long[:MAX_TEXT] and len(cut.text) == MAX_TEXT
    assert whole.text == long


def test_values_of_different_json_types_in_one_field_are_kept_as_their_text():
    lines = ['{"a": 1, "b": 1}', '{"a": [1, 2], "b": 2.5}', '{"a": {"c": 1}, "b": 3}', '{"a": true}', '{"a": "x"}',
             '{"b": 4, "a": null}']
    rows, bad, _ = parse_jsonl("\n".join(lines).encode(), "f")
    assert bad == []
    assert rows.schema == pl.Schema({"a": pl.String, "b": pl.Float64, LINE: pl.Int64})
    assert rows["a"].to_list() == ["1", "[1, 2]", '{"c": 1}', "true", "x", None]  # none of them nulled or coerced
    assert rows["b"].to_list() == [1.0, 2.5, 3.0, None, None, 4.0]
    assert rows[LINE].to_list() == [1, 2, 3, 4, 5, 6]


def test_a_tail_reads_each_line_once_and_a_torn_line_when_it_is_finished(tmp_path):
    (tmp_path / "events").mkdir()
    path = tmp_path / "events" / "feedback-a.jsonl"
    path.write_text(f"{GOOD_1}\n" + '{"event_id": 2, "item_')
    tail = JsonlTail(tmp_path, "events/*.jsonl")
    rows, bad = tail.poll()
    assert rows is not None and rows["event_id"].to_list() == [1] and bad == []
    with open(path, "a") as f:
        f.write('id": 20}\nnot json\n')
    rows, bad = tail.poll()
    assert rows is not None and rows.to_dicts() == [{"event_id": 2, "item_id": 20, LINE: 2}]
    assert [(b.line, b.text) for b in bad] == [(3, "not json")]
    assert tail.poll() == (None, [])
