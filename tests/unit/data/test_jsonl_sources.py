"""JSON-lines sources (a shop's export, the serving app's feedback log): a torn or unparseable line is quarantined
with its file, line and text and costs only itself; a retried event written twice is one event."""

import json
from datetime import UTC, datetime

import polars as pl
import pytest

from recsys.cli import main
from recsys.config import IngestConfig, ValidationConfig
from recsys.data.ingest import IngestSchemaError
from recsys.data.validate import validate
from recsys.eventlog.feedback import FEEDBACK_INGEST
from recsys.events import EVENTS
from tests.conftest import TINY

NOW = datetime(2026, 11, 27, tzinfo=UTC)
LENIENT = ValidationConfig(max_bad_row_share=0.5)  # a handful of rows, several of them bad on purpose


def _shop(root, events=True):
    """A shop export small enough to check by hand: users 1 and 2, items 10 and 11, events 1 and 2."""
    (root / "events").mkdir(parents=True)
    pl.DataFrame({"user_id": [1, 2], "signup_date": [datetime(2026, 1, 1).date()] * 2, "country": ["DE", "FR"],
                  "device": ["mobile", "desktop"]}).write_parquet(root / "users.parquet")
    pl.DataFrame({"item_id": [10, 11], "category": ["shoes", "hats"], "brand": ["a", "b"], "price": [9.5, 20.0],
                  "available": [True, True]}).write_parquet(root / "items.parquet")
    if events:
        pl.DataFrame({"event_id": [1, 2], "timestamp": [datetime(2026, 9, 9, 8, tzinfo=UTC)] * 2,
                      "user_id": [1, 2], "item_id": [10, 11], "event_type": ["view", "view"], "session_id": [7, 8],
                      "request_id": [None, None], "position": [None, None]},
                     schema_overrides={"request_id": pl.Int64, "position": pl.Int32}
                     ).write_parquet(root / "events" / "part-00000.parquet")
    return root


def _event(event_id, event_type, item_id, position=None, variant="production"):
    """One feedback line as the app writes it (compact JSON, the EVENTS columns and the variant)."""
    return json.dumps({"event_id": event_id, "timestamp": "2026-09-10T12:00:00+00:00", "user_id": 1,
                       "item_id": item_id, "event_type": event_type, "session_id": 5, "request_id": 5,
                       "position": position, "variant": variant}, separators=(",", ":"))


def _lines(path, *lines, newline_at_end=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + ("\n" if newline_at_end else ""))
    return path


def _quarantine(out):
    return pl.read_parquet(out / "quarantine" / "events.parquet")


def test_validate_feedback_with_torn_lines_and_a_retried_copy_end_to_end(tmp_path, capsys):
    source, log = _shop(tmp_path / "shop"), tmp_path / "served"
    torn_middle = '{"event_id":103,"timestamp":"2026-09-10T12:0'
    torn_last = '{"event_id":106,"user_id":1,"ite'
    a = _lines(log / "events" / "feedback-a.jsonl",
               _event(101, "impression", 10, 0), _event(102, "click", 10, 0), torn_middle,
               _event(104, "impression", 11, 1))
    b = _lines(log / "events" / "feedback-b.jsonl",
               _event(105, "view", 11), _event(101, "impression", 10, 0),  # 2: a retry, sent to another replica
               torn_last, newline_at_end=False)
    c = _lines(log / "events" / "feedback-c.jsonl",
               _event(102, "click", 10, 3),  # 102 again, but another event (position 3): not a copy
               _event(107, "purchase", 11), newline_at_end=False)  # a last line without newline that parses
    out = tmp_path / "validated"
    code = main(["data", "validate", "--config", str(TINY), "--quiet", "--source", str(source), "--out", str(out),
                 "--feedback", str(log), "--set", "validation.max_bad_row_share=0.5"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    kept = pl.read_parquet(out / "events.parquet")
    assert kept.columns == EVENTS.names  # the variant is not an events column
    assert sorted(kept["event_id"].to_list()) == [1, 2, 101, 102, 104, 105, 107]
    first_102 = kept.filter(pl.col("event_id") == 102).row(0, named=True)
    assert (first_102["event_type"], first_102["position"], first_102["item_id"]) == ("click", 0, 10)
    quarantine = _quarantine(out).sort("source_file", "source_row")
    assert quarantine.select("source_file", "source_row", "reason", "raw_line", "event_id").rows() == [
        (str(a), 3, "unparseable line", torn_middle, None),
        (str(b), 3, "unparseable line", torn_last, None),
        (str(c), 1, "duplicate event_id", None, "102"),
    ]
    report = json.loads((out / "report.json").read_text())["tables"]["events"]
    # 2 export rows + 4 + 3 + 2 lines; the copy of 101 is dropped and counted, not quarantined
    assert (report["rows"], report["good"], report["bad"], report["deduplicated"]) == (11, 7, 3, 1)
    assert report["reasons"] == {"unparseable line": 2, "duplicate event_id": 1}
    assert "1 deduplicated" in (out / "report.txt").read_text() and "1 deduplicated" in printed.out


def test_a_table_problem_in_the_feedback_log_is_one_line_not_a_traceback(tmp_path, capsys):
    source, log = _shop(tmp_path / "shop"), tmp_path / "served"
    line = json.loads(_event(101, "click", 10, 0))
    del line["user_id"]  # a writer that leaves out a required column altogether
    _lines(log / "events" / "feedback-a.jsonl", json.dumps(line), '{"event_id":102,"ti')
    code = main(["data", "validate", "--config", str(TINY), "--quiet", "--source", str(source),
                 "--out", str(tmp_path / "validated"), "--feedback", str(log)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: events: required column(s) missing: user_id; the files (feedback-a.jsonl)")
    assert not (tmp_path / "validated").exists()


def test_a_shop_export_in_json_lines_with_torn_lines(tmp_path):
    source = _shop(tmp_path / "shop", events=False)
    export = _lines(source / "events.jsonl", _event(1, "view", 10), '{"event_id": 2, "timestamp": "2026-09-',
                    _event(3, "view", 11), "", "not json at all", _event(5, "click", 11, 2), newline_at_end=False)
    ingest = IngestConfig(events="events.jsonl")
    report = validate(source, tmp_path / "out", LENIENT, ingest, now=NOW)
    assert sorted(pl.read_parquet(tmp_path / "out" / "events.parquet")["event_id"]) == [1, 3, 5]
    assert _quarantine(tmp_path / "out").select("source_file", "source_row", "reason", "raw_line").rows() == [
        (str(export), 2, "unparseable line", '{"event_id": 2, "timestamp": "2026-09-'),
        (str(export), 5, "unparseable line", "not json at all"),
    ]
    t = report.tables["events"]
    assert (t.rows, t.good, t.bad, t.deduplicated, t.reasons) == (5, 3, 2, 0, {"unparseable line": 2})


def test_a_feedback_file_with_nothing_but_a_torn_line_is_quarantined_not_a_schema_error(tmp_path):
    source, log = _shop(tmp_path / "shop"), tmp_path / "served"
    torn = _lines(log / "events" / "feedback-a.jsonl", '{"event_id":101,"times', newline_at_end=False)
    report = validate(source, tmp_path / "out", LENIENT, IngestConfig(), now=NOW, extra_events=[(log, FEEDBACK_INGEST)])
    assert _quarantine(tmp_path / "out").select("source_file", "source_row", "reason").rows() == [
        (str(torn), 1, "unparseable line")]
    assert (report.tables["events"].good, report.tables["events"].bad) == (2, 1)


def test_a_value_of_another_json_type_is_quarantined_with_its_text(tmp_path):
    source = _shop(tmp_path / "shop", events=False)
    line = json.loads(_event(2, "view", 11))
    _lines(source / "events.jsonl", _event(1, "view", 10), json.dumps({**line, "event_id": [2, 3]}),
           json.dumps({**line, "event_id": "two"}), _event(4, "view", 11))
    validate(source, tmp_path / "out", LENIENT, IngestConfig(events="events.jsonl"), now=NOW)
    assert sorted(pl.read_parquet(tmp_path / "out" / "events.parquet")["event_id"]) == [1, 4]
    assert _quarantine(tmp_path / "out").select("source_row", "reason", "event_id").rows() == [
        (2, "unparseable event_id", "[2, 3]"), (3, "unparseable event_id", "two")]


def test_exact_copies_are_one_event_whatever_the_source(tmp_path):
    source = _shop(tmp_path / "shop")
    log = tmp_path / "served"
    # event 1 of the export, fed back too (its timestamp written another way: the same instant)
    same = {"event_id": 1, "timestamp": "2026-09-09T08:00:00Z", "user_id": 1, "item_id": 10, "event_type": "view",
            "session_id": 7, "request_id": None, "position": None, "variant": "production"}
    _lines(log / "events" / "feedback-a.jsonl", json.dumps(same), json.dumps(same),
           json.dumps({**same, "timestamp": "never"}), json.dumps({**same, "timestamp": "never"}),
           json.dumps({**same, "timestamp": "later"}))
    report = validate(source, tmp_path / "out", LENIENT, IngestConfig(), now=NOW, extra_events=[(log, FEEDBACK_INGEST)])
    t = report.tables["events"]
    # lines 1-2 copy export row 1; line 4 copies line 3 (the same unparseable text); line 5 is unparseable otherwise
    assert (t.rows, t.good, t.deduplicated) == (7, 2, 3)
    assert _quarantine(tmp_path / "out").select("source_row", "reason", "timestamp").rows() == [
        (3, "unparseable timestamp; duplicate event_id", "never"), (5, "unparseable timestamp; duplicate event_id",
                                                                   "later")]


def test_source_row_is_the_row_within_its_own_file(tmp_path):
    source = _shop(tmp_path / "shop")
    first = pl.read_parquet(source / "events" / "part-00000.parquet")
    pl.concat([first.with_columns(pl.col("event_id") + 10), first.with_columns(pl.col("event_id") + 20,
                                                                               pl.lit(99, pl.Int64).alias("item_id"))]
              ).write_parquet(source / "events" / "part-00001.parquet")
    validate(source, tmp_path / "out", LENIENT, IngestConfig(), now=NOW)
    assert _quarantine(tmp_path / "out").select("source_file", "source_row", "reason").rows() == [
        (str(source / "events" / "part-00001.parquet"), 2, "unknown item_id"),
        (str(source / "events" / "part-00001.parquet"), 3, "unknown item_id")]


def test_an_unreadable_file_is_a_schema_error(tmp_path):
    source = _shop(tmp_path / "shop")
    (source / "events" / "part-00001.parquet").write_text("not parquet")
    with pytest.raises(IngestSchemaError, match=r"^events: "):
        validate(source, tmp_path / "out", LENIENT, IngestConfig(), now=NOW)
    assert not (tmp_path / "out").exists()


def test_a_retried_feedback_event_is_one_event_though_each_copy_has_its_arrival_time(tmp_path):
    """The app stamps an event without a client time when it receives it: a retry that reached another replica
    carries the same event_id and content but a later time. It is a copy, not a duplicate id."""
    source = _shop(tmp_path / "shop")
    log = tmp_path / "served"
    event = {"event_id": 900, "timestamp": "2026-09-09T08:00:00Z", "user_id": 1, "item_id": 10,
             "event_type": "click", "session_id": 7, "request_id": 7, "position": 0, "variant": "production"}
    _lines(log / "events" / "feedback-a.jsonl", json.dumps(event))
    _lines(log / "events" / "feedback-b.jsonl", json.dumps({**event, "timestamp": "2026-09-09T08:00:02Z"}))
    report = validate(source, tmp_path / "out", LENIENT, IngestConfig(), now=NOW, extra_events=[(log, FEEDBACK_INGEST)])
    kept = pl.read_parquet(tmp_path / "out" / "events.parquet").filter(pl.col("event_id") == 900)
    assert kept.height == 1 and kept["timestamp"].dt.second().item() == 0  # the first copy, its time
    assert report.tables["events"].deduplicated == 1 and report.tables["events"].bad == 0
