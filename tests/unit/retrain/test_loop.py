"""The loop's parts that need no cluster: the canary's test, its config, when a cycle is due, resuming finished
steps, and the app's feedback validated with a shop export. (The whole loop runs in
tests/integration/test_loop.py.)"""

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from recsys.config import ConfigError
from recsys.data.validate import validate
from recsys.eventlog.feedback import FEEDBACK_INGEST, FeedbackLog, event_id_for
from recsys.retrain.config import CanaryConfig, LoopConfig, load_loop_config
from recsys.retrain.loop import Loop
from recsys.retrain.verdict import ctr_test
from recsys.schema import PROJECT_ROOT


def test_ctr_test_against_a_hand_worked_example():
    # users (clicks, impressions); CTR = sum c / sum n, var = (s_c^2 - 2 R s_cn + R^2 s_n^2) / (N nbar^2), ddof 1
    # candidate: R = 6/40 = 0.15, s_c^2 = 4, s_cn = 10, s_n^2 = 33.33, nbar = 13.33: var = 1.75 / 533.3 = 0.0032813
    # production: R = 2/40 = 0.05, s_c^2 = 0.3333, s_cn = -3.333: var = 0.75 / 533.3 = 0.0014063
    # z = 0.1 / sqrt(0.0046875) = 1.46059, one-sided p = 1 - Phi(z) = 0.072064
    candidate = np.array([(2, 10), (0, 10), (4, 20)])
    production = np.array([(1, 10), (1, 10), (0, 20)])
    z, p = ctr_test(candidate, production)
    assert z == pytest.approx(1.46059, abs=1e-5)
    assert p == pytest.approx(0.072064, abs=1e-6)
    z_rev, p_rev = ctr_test(production, candidate)
    assert z_rev == pytest.approx(-z) and p_rev == pytest.approx(1 - p)
    # the same totals from one heavy user per side are no evidence at all: users are the unit
    assert ctr_test(np.array([(6, 40)]), np.array([(2, 40)])) == (0.0, 0.5)
    assert ctr_test(np.array([(0, 10), (0, 10)]), np.array([(0, 10), (0, 10)])) == (0.0, 0.5)


def test_the_shipped_config_loads_and_bad_values_are_named():
    cfg = load_loop_config(PROJECT_ROOT / "configs" / "loop" / "default.yaml")
    assert cfg.models == ("dlrm", "two-tower") and cfg.canary.share == 0.5
    with pytest.raises(ConfigError, match="models must include 'dlrm'"):
        LoopConfig(models=("two-tower",))
    with pytest.raises(ConfigError, match=r"canary.share must be within \(0, 1\), got 1.0"):
        LoopConfig(canary=CanaryConfig(share=1.0))
    with pytest.raises(ConfigError, match=r"canary\.alpha must be within"):
        load_loop_config(None, ["canary.alpha=0"])
    with pytest.raises(ConfigError, match="unknown config key"):
        load_loop_config(None, ["canary.shares=0.2"])


def _loop(tmp_path, **kw) -> Loop:
    return Loop(LoopConfig(work_dir=str(tmp_path / "loop"), trigger_file=str(tmp_path / "retrain.jsonl"), **kw),
                echo=lambda _: None)


def _request(tmp_path, reason: str) -> None:
    with open(tmp_path / "retrain.jsonl", "a") as f:
        f.write(json.dumps({"at": 0, "reason": reason}) + "\n")


def test_a_cycle_is_due_on_new_requests_once_and_after_the_cooldown(tmp_path):
    loop = _loop(tmp_path, cooldown_minutes=30)
    assert loop.due() is None
    _request(tmp_path, "ctr_drop{variant=production} firing")
    _request(tmp_path, "data_drift_critical firing")
    assert loop.due() == "alert: data_drift_critical firing (+1 more request(s))"
    loop.start(loop.due())
    assert Loop(loop.cfg).state.current["reason"].startswith("alert: data_drift")  # persisted
    loop.state.end_cycle("promoted", "test")
    assert loop.due() is None  # both requests were consumed by that cycle
    _request(tmp_path, "ctr_drop again")
    assert loop.due() is None  # within the cooldown
    later = datetime.now(UTC) + timedelta(minutes=31)
    assert loop.due(later) == "alert: ctr_drop again"


def test_a_schedule_starts_cycles_without_requests(tmp_path):
    loop = _loop(tmp_path, schedule_hours=24)
    assert loop.due() == "schedule: every 24 h"  # never ran
    loop.start("schedule")
    loop.state.end_cycle("rolled_back", "test")
    assert loop.due() is None
    assert loop.due(datetime.now(UTC) + timedelta(hours=25)) == "schedule: every 24 h"


def test_finished_steps_are_not_run_again_after_a_restart(tmp_path):
    loop = _loop(tmp_path)
    loop.start("by hand")
    calls = []
    first = loop._step("validate", lambda: calls.append(1) or {"validated": "x", "summary": "ok"})
    with pytest.raises(RuntimeError):
        loop._step("build", lambda: (_ for _ in ()).throw(RuntimeError("crash mid-step")))
    restarted = _loop(tmp_path)  # a new process reads the state file
    again = restarted._step("validate", lambda: calls.append(2) or {"summary": "redone"})
    assert calls == [1] and again == first
    assert restarted.state.done("build") is None  # the crashed step runs again
    with pytest.raises(Exception, match="unfinished"):
        restarted.start("another")


def test_an_export_that_cannot_be_read_ends_the_cycle_with_why(tmp_path):
    (tmp_path / "export").mkdir()
    loop = _loop(tmp_path, source=str(tmp_path / "export"), event_log=str(tmp_path / "events"))
    cycle = loop.tick(force_reason="by hand")
    assert cycle["outcome"] == "data_refused" and "no files match" in cycle["detail"]
    assert loop.state.current is None and loop.tick() is None  # nothing left to resume, nothing due


RID = 10**15 + 7  # a request id the generator does not use


def test_feedback_events_are_validated_with_the_export(tiny_raw, tiny_cfg, tmp_path):
    events = pl.read_parquet(tiny_raw / "events" / "*.parquet")
    user, item = events["user_id"][0], events["item_id"][0]
    log = FeedbackLog(tmp_path / "served")
    log.append([{"user_id": user, "item_id": i, "event_type": t, "session_id": RID, "request_id": RID,
                 "position": 0, "event_id": event_id_for(RID, i, t)}
                for i, t in ((item, "impression"), (item, "click"), (10**9, "click"))], "production")
    plain = validate(tiny_raw, tmp_path / "plain", tiny_cfg.validation, tiny_cfg.ingest)
    both = validate(tiny_raw, tmp_path / "both", tiny_cfg.validation, tiny_cfg.ingest,
                    extra_events=[(tmp_path / "served", FEEDBACK_INGEST)])
    assert both.tables["events"].good == plain.tables["events"].good + 2
    assert both.tables["events"].bad == plain.tables["events"].bad + 1  # the unknown item, quarantined
    kept = pl.read_parquet(tmp_path / "both" / "events.parquet").filter(pl.col("request_id") == RID)
    assert sorted(kept["event_type"].cast(pl.String).to_list()) == ["click", "impression"]
    assert any(f["path"].endswith(log.path.name) for f in both.tables["events"].files)
    assert len(both.tables["events"].files) == len(plain.tables["events"].files) + 1
