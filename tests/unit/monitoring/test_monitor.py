"""`recsys monitor`'s evaluation on hand-made app logs, with the shipped alert rules."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from recsys.cli import main as recsys_main
from recsys.data.profile import profile_features
from recsys.eventlog.request_ids import RequestIds
from recsys.monitoring.monitor import Monitor
from tests.conftest import ROOT
from tests.unit.monitoring.test_drift import FEATURES, _shop

RULES = ROOT / "configs" / "monitoring" / "alerts.yaml"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
IDS = RequestIds(b"k" * 32)
EVENT_IDS = itertools.count(1)


def log_requests(root, start: datetime, frame, variant="production"):
    folder = root / "requests"
    folder.mkdir(parents=True, exist_ok=True)
    names = [c for c in frame.columns if c != "click"]
    with open(folder / "requests-a.jsonl", "a") as f:
        for i, row in enumerate(frame.select(names).iter_rows(named=True)):
            at = start + timedelta(seconds=i * 600 / frame.height)  # spread over 10 minutes
            inputs = {k: (list(v) if isinstance(v, list | np.ndarray) else v) for k, v in row.items()}
            f.write(json.dumps({"timestamp": at.isoformat(), "request_id": IDS.issue(i, variant), "user_id": i,
                                "variant": variant, "cold_start": False, "degraded": False, "total_ms": 12.0,
                                "items": [1], "scores": [0.5], "inputs": inputs}) + "\n")


def log_feedback(root, start: datetime, variant: str, impressions: int, clicks: int):
    folder = root / "events"
    folder.mkdir(parents=True, exist_ok=True)
    rid = IDS.issue(1, variant)
    with open(folder / "feedback-a.jsonl", "a") as f:
        for n in range(impressions):
            at = (start + timedelta(seconds=n % 600)).isoformat()
            for event in ("impression", "click") if n < clicks else ("impression",):
                f.write(json.dumps({"event_id": next(EVENT_IDS), "timestamp": at, "request_id": rid, "user_id": 1,
                                    "item_id": 1, "event_type": event, "variant": variant}) + "\n")


@pytest.fixture(scope="module")
def profile():
    return profile_features(_shop(100_000, seed=0).lazy(), FEATURES)


def test_stable_traffic_raises_nothing_and_drift_plus_a_ctr_drop_do(tmp_path, profile):
    log = tmp_path / "log"
    log_requests(log, T0, _shop(3000, seed=1))
    log_feedback(log, T0, "production", 2000, 200)
    log_feedback(log, T0, "candidate", 1000, 100)
    monitor = Monitor(log, profile, RULES, window=timedelta(minutes=15), state_file=tmp_path / "alerts.json",
                      trigger_file=tmp_path / "retrain.jsonl", history_file=tmp_path / "history.jsonl")
    for minute in (10, 11, 12):  # stable: no alert however often it looks (false-positive check)
        snap = monitor.evaluate(T0 + timedelta(minutes=minute))
        assert snap.notifications == [], snap.notifications
    m = snap.metrics
    assert m["ctr.production"] == pytest.approx(0.1) and m["ctr.candidate"] == pytest.approx(0.1)
    assert m["serving.requests"] == 3000 and m["serving.degraded_share"] == 0.0 and m["serving.p99_ms"] == 12.0
    assert m["drift.max_psi"] < 0.05 and m["drift.n_drifted"] == 0

    later = T0 + timedelta(minutes=30)  # the users changed (device shares, prices); the candidate's CTR fell
    log_requests(log, later, _shop(3000, seed=2, device=np.array([0.2, 0.3, 0.5]), price_shift=1.0))
    log_feedback(log, later, "production", 2000, 200)
    log_feedback(log, later, "candidate", 1000, 20)
    fired = []
    for minute in (40, 41, 42):
        fired += monitor.evaluate(later + timedelta(minutes=minute - 30)).notifications
    names = sorted((n.rule, n.labels.get("variant", "")) for n in fired if n.status == "firing")
    assert ("data_drift_critical", "") in names and ("ctr_drop", "candidate") in names
    assert ("ctr_drop", "production") not in names
    assert len([n for n in fired if n.rule == "data_drift_critical"]) == 1  # fired once, not every evaluation
    triggers = [json.loads(line) for line in (tmp_path / "retrain.jsonl").read_text().splitlines()]
    assert [t["alert"]["rule"] for t in triggers] == ["data_drift_critical"]  # the rule with the retrain sink
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 6


def test_drift_waits_for_enough_rows_and_skips_the_features_it_is_told_to(tmp_path, profile):
    log = tmp_path / "log"
    log_requests(log, T0, _shop(3000, seed=2, device=np.array([0.2, 0.3, 0.5]), price_shift=1.0))
    now = T0 + timedelta(minutes=11)

    def metrics(**kw):
        return Monitor(log, profile, RULES, window=timedelta(minutes=15), **kw).evaluate(now).metrics

    drifted = metrics()
    assert drifted["drift.rows"] == 3000 and set(drifted["drift.drifted_features"]) == {"device", "price"}
    few = metrics(min_drift_rows=3001)  # a handful of rows gives a noisy PSI: no drift metrics, no drift alert
    assert few["drift.rows"] == 3000 and "drift.max_psi" not in few
    kept = metrics(skip_features=("device", "price"))
    assert kept["drift.n_features"] == drifted["drift.n_features"] - 2 and kept["drift.n_drifted"] == 0


def test_the_cli_evaluates_once_on_an_empty_log(tmp_path, tiny_dataset, capsys):
    assert recsys_main(["monitor", "--event-log", str(tmp_path / "none"), "--dataset", str(tiny_dataset.path),
                        "--state", str(tmp_path / "a.json"), "--trigger", str(tmp_path / "t.jsonl"),
                        "--history", str(tmp_path / "h.jsonl")]) == 0
    assert "requests 0" in capsys.readouterr().out
