"""Model metrics from the app's logs (recsys.monitoring.online) on hand-made log files."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from recsys.eventlog.request_ids import RequestIds, variant_of
from recsys.monitoring import online

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def write_feedback(root, rows, torn: str = ""):
    """Rows as the app writes them (an event id each, the variant), then ``torn`` (a line a killed writer left)."""
    folder = root / "events"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"event_id": n + 1, **r, "variant": variant_of(r["request_id"])}) for n, r in enumerate(rows)]
    # (a row that names its event_id keeps it: a retry repeats the id)
    (folder / "feedback-a.jsonl").write_text("".join(line + "\n" for line in lines) + torn)


def test_ctr_per_variant_over_windows(tmp_path):
    ids = RequestIds(b"k" * 32)
    rows = []
    # minute 0-9: production 100 impressions / 10 clicks per minute; candidate 50 / 10
    for minute in range(10):
        at = (T0 + timedelta(minutes=minute)).isoformat()
        for variant, impressions, clicks in (("production", 100, 10), ("candidate", 50, 10)):
            rid = ids.issue(1, variant)
            rows += [{"timestamp": at, "request_id": rid, "user_id": 1, "item_id": 1, "event_type": "impression"}
                     ] * impressions
            rows += [{"timestamp": at, "request_id": rid, "user_id": 1, "item_id": 1, "event_type": "click"}] * clicks
    rows.append({"timestamp": T0.isoformat(), "request_id": ids.issue(1, "production"), "user_id": 1,
                 "item_id": 1, "event_type": "purchase"})
    rows = [{"event_id": n + 1, **r} for n, r in enumerate(rows)]
    write_feedback(tmp_path, rows + rows[:30], torn='{"event_id": 9, "timesta')  # a retry of 30; a torn line
    events = online.feedback(tmp_path)
    last5 = online.rates_by_variant(events, timedelta(minutes=5), T0 + timedelta(minutes=9))
    assert last5["variant"].to_list() == ["candidate", "production"]
    assert last5["impressions"].to_list() == [250, 500] and last5["clicks"].to_list() == [50, 50]
    assert last5["ctr"].to_list() == pytest.approx([0.2, 0.1])
    everything = online.rates_by_variant(events, timedelta(hours=1), T0 + timedelta(minutes=9))
    assert everything.filter(variant="production")["purchases"].item() == 1
    series = online.rates_over_time(events, every=timedelta(minutes=5), window=timedelta(minutes=5))
    production = series.filter(variant="production")
    assert production["ctr"].to_list() == pytest.approx([0.1] * production.height)
    assert production["impressions"].max() == 500  # a full 5-minute window
    assert online.feedback(tmp_path / "nothing") is None


def test_score_distribution_and_live_inputs(tmp_path):
    folder = tmp_path / "requests"
    folder.mkdir()
    rows = [{"timestamp": T0.isoformat(), "request_id": 1, "user_id": 1, "variant": "production",
             "cold_start": False, "degraded": False, "items": [1, 2], "scores": [0.2, 0.4],
             "inputs": {"user_country": 3}},
            {"timestamp": T0.isoformat(), "request_id": 2, "user_id": 2, "variant": "candidate",
             "cold_start": False, "degraded": False, "items": [3], "scores": [0.9], "inputs": {"user_country": 4}},
            {"timestamp": T0.isoformat(), "request_id": 3, "user_id": 99, "variant": "production",
             "cold_start": True, "degraded": False, "items": [5], "scores": None}]
    (folder / "requests-a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    logged = online.requests(tmp_path)
    scores = online.score_distribution(logged, quantiles=(0.5,))
    assert scores.rows() == [("candidate", 1, 0.9), ("production", 2, pytest.approx(0.4))]
    live = online.live_inputs(logged).collect()
    assert live["user_country"].to_list() == [3, 4]


def test_a_live_log_reads_each_line_once_and_keeps_only_its_window(tmp_path):
    ids = RequestIds(b"k" * 32)
    rid = ids.issue(1, "production")

    def event(n, minute):
        return {"timestamp": (T0 + timedelta(minutes=minute)).isoformat(), "request_id": rid, "user_id": 1,
                "item_id": n, "event_type": "impression"}

    write_feedback(tmp_path, [event(n, 0) for n in range(5)], torn='{"event_id": 99, "tim')
    live = online.feedback_log(tmp_path, horizon=timedelta(minutes=10))
    assert live.refresh(T0).height == 5 and live.rows_read == 5 and live.bad == []  # the torn end: not yet a line
    path = tmp_path / "events" / "feedback-a.jsonl"
    with open(path, "a") as f:  # the killed writer's file gets no more; a new line after it is a bad line
        f.write("\n" + json.dumps({"event_id": 50, **event(50, 12), "variant": "production"}) + "\n")
    frame = live.refresh(T0 + timedelta(minutes=12))
    assert frame["item_id"].to_list() == [50]  # minute 0 fell out of the 10-minute window
    assert live.rows_read == 6 and [(b.line, b.file) for b in live.bad] == [(6, str(path))]
    assert live.refresh(T0 + timedelta(minutes=12)).height == 1 and live.rows_read == 6  # nothing new: nothing read
