"""Alerts: fire after `for`, de-duplicate while breaching, resolve, survive a restart; webhook delivery to a
real local HTTP server; failures logged, never raised; the retrain callback; bad rule files."""

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from recsys.config import ConfigError
from recsys.monitoring.alerts import AlertManager, CallbackSink, WebhookSink
from recsys.monitoring.rules import AlertRule, load_alert_config, parse_alert_config

ROOT = Path(__file__).resolve().parents[3]


def _rule(**kw):
    return AlertRule(**{"name": "drift", "metric": "drift.max_psi", "comparison": ">", "threshold": 0.2,
                        "for_": 2, "severity": "critical", **kw})


def _statuses(notifications):
    return [(n.fingerprint, n.status) for n in notifications]


def test_fires_after_for_deduplicates_and_resolves():
    manager = AlertManager([_rule()])
    psi = [0.1, 0.3, 0.1, 0.3, 0.35, 0.4, None, 0.5, 0.05, 0.05]
    out = [_statuses(manager.evaluate({} if v is None else {"drift.max_psi": v}, at=100.0 + i))
           for i, v in enumerate(psi)]
    assert out == [
        [], [],  # one breach (for: 2) ...
        [],  # ... reset by a good value
        [], [("drift", "firing")],  # two consecutive breaches
        [],  # still breaching: not sent again
        [],  # no data: no change
        [],
        [("drift", "resolved")],
        [],
    ]


def test_notification_content():
    manager = AlertManager([_rule(for_=1, labels={"team": "ml"}, description="retrain")])
    [fired] = manager.evaluate({"drift.max_psi": 0.31, "other": 1.0}, at=1_800_000_000.0)
    assert fired.fingerprint == 'drift{team="ml"}' and manager.firing == ['drift{team="ml"}']
    payload = fired.to_dict()
    assert payload["status"] == "firing" and payload["value"] == 0.31 and payload["labels"] == {"team": "ml"}
    assert payload["summary"] == '[critical] drift{team="ml"} firing: drift.max_psi = 0.31 > 0.2'
    assert payload["started_at_iso"] == "2027-01-15T08:00:00Z"
    [resolved] = manager.evaluate({"drift.max_psi": 0.05}, at=1_800_000_060.0)
    assert resolved.summary.endswith("resolved: drift.max_psi = 0.05, no longer > 0.2")
    assert resolved.started_at == 1_800_000_000.0 and manager.firing == []


def test_one_alert_per_label_value():
    manager = AlertManager([AlertRule("ctr_drop", "ctr.{variant}", "<", 0.05, for_=1)])
    out = manager.evaluate({"ctr.production": 0.07, "ctr.candidate": 0.03, "ctr.candidate.raw": 0.0})
    assert _statuses(out) == [('ctr_drop{variant="candidate"}', "firing")]
    out = manager.evaluate({"ctr.production": 0.02, "ctr.candidate": 0.02})
    assert _statuses(out) == [('ctr_drop{variant="production"}', "firing")]  # candidate: already firing
    out = manager.evaluate({"ctr.production": 0.02, "ctr.candidate": 0.06})
    assert _statuses(out) == [('ctr_drop{variant="candidate"}', "resolved")]


def test_state_survives_a_restart(tmp_path):
    state = tmp_path / "alerts" / "state.json"
    calls = []
    first = AlertManager([_rule(for_=1, sinks=("log", "retrain"))], {"retrain": CallbackSink(calls.append)}, state)
    assert _statuses(first.evaluate({"drift.max_psi": 0.5})) == [("drift", "firing")]
    assert json.loads(state.read_text())["alerts"]["drift"]["status"] == "firing"

    second = AlertManager([_rule(for_=1, sinks=("log", "retrain"))], {"retrain": CallbackSink(calls.append)}, state)
    assert second.firing == ["drift"]
    assert second.evaluate({"drift.max_psi": 0.6}) == []  # not re-fired, not retrained again
    assert len(calls) == 1
    assert _statuses(second.evaluate({"drift.max_psi": 0.1})) == [("drift", "resolved")]
    assert json.loads(state.read_text())["alerts"] == {}


def test_state_of_removed_rules_and_unreadable_state(tmp_path, caplog):
    state = tmp_path / "state.json"
    AlertManager([_rule(for_=1)], state_path=state).evaluate({"drift.max_psi": 0.5})
    assert AlertManager([_rule(name="other")], state_path=state).firing == []
    state.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="recsys.alerts"):
        assert AlertManager([_rule()], state_path=state).firing == []
    assert "unreadable" in caplog.text


def test_retrain_callback_once_per_firing():
    calls = []
    manager = AlertManager([_rule(sinks=("retrain",))], {"retrain": CallbackSink(calls.append)})
    for v in [0.3, 0.3, 0.3, 0.3, 0.1, 0.3, 0.3, 0.3]:
        manager.evaluate({"drift.max_psi": v})
    assert [n.status for n in calls] == ["firing", "firing"]  # fired twice, never on resolve


def test_failing_sinks_are_logged_not_raised(caplog):
    def broken(_):
        raise RuntimeError("trainer is down")

    manager = AlertManager([_rule(for_=1, sinks=("retrain", "log"))], {"retrain": CallbackSink(broken)})
    with caplog.at_level(logging.INFO, logger="recsys.alerts"):
        [n] = manager.evaluate({"drift.max_psi": 0.9})
    assert n.status == "firing"
    assert "alert sink 'retrain' failed on drift" in caplog.text and "trainer is down" in caplog.text
    assert "[critical] drift firing" in caplog.text  # the log sink still got it
    assert any(r.levelno == logging.ERROR and "firing" in r.getMessage() for r in caplog.records)


def test_unregistered_sink_is_warned_about_once(caplog):
    with caplog.at_level(logging.WARNING, logger="recsys.alerts"):
        manager = AlertManager([_rule(for_=1, sinks=("log", "webhook"))])
    assert "alert sink 'webhook' is not configured: rules ['drift']" in caplog.text
    assert len(manager.evaluate({"drift.max_psi": 0.9})) == 1


# ---- webhook against a real HTTP server ----

class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(self.server.codes.pop(0) if self.server.codes else 200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.received, server.codes = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_webhook_delivers_firing_and_resolved(receiver):
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    config = parse_alert_config({"rules": [{"name": "p99", "metric": "serving.p99_ms", "comparison": ">",
                                            "threshold": 50, "for": 1, "sinks": ["log", "webhook"]}],
                                 "webhook": {"url": url, "retries": 0}})
    manager = AlertManager.from_config(config)
    manager.evaluate({"serving.p99_ms": 80.0})
    manager.evaluate({"serving.p99_ms": 90.0})
    manager.evaluate({"serving.p99_ms": 20.0})
    assert [(ctype, p["status"], p["rule"], p["value"]) for ctype, p in receiver.received] == [
        ("application/json", "firing", "p99", 80.0), ("application/json", "resolved", "p99", 20.0)]


def test_webhook_retries_server_errors(receiver):
    receiver.codes = [503, 500]
    sink = WebhookSink(f"http://127.0.0.1:{receiver.server_address[1]}/", retries=2, backoff_s=0.01)
    manager = AlertManager([_rule(for_=1, sinks=("webhook",))], {"webhook": sink})
    manager.evaluate({"drift.max_psi": 0.9})
    assert len(receiver.received) == 3  # two 5xx, then delivered


def test_webhook_to_a_closed_port_is_logged_not_raised(caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free, and nobody listens once closed
    sink = WebhookSink(f"http://127.0.0.1:{port}/", timeout_s=1, retries=1, backoff_s=0.01)
    manager = AlertManager([_rule(for_=1, sinks=("webhook",))], {"webhook": sink})
    with caplog.at_level(logging.ERROR, logger="recsys.alerts"):
        [n] = manager.evaluate({"drift.max_psi": 0.9})
    assert n.status == "firing" and manager.firing == ["drift"]
    assert f"alert webhook http://127.0.0.1:{port}/: drift not delivered after 2 attempt(s)" in caplog.text


# ---- rule files ----

def test_the_shipped_rules_load():
    config = load_alert_config(ROOT / "configs" / "monitoring" / "alerts.yaml")
    by_name = {r.name: r for r in config.rules}
    assert by_name["data_drift_critical"].threshold == 0.2 and by_name["data_drift_critical"].severity == "critical"
    assert "retrain" in by_name["data_drift_critical"].sinks
    assert by_name["data_drift_warning"].threshold == 0.1 and by_name["data_drift_warning"].severity == "warning"
    assert {"ctr_drop", "serving_degraded_share", "serving_p99_latency"} <= set(by_name)
    # a production CTR drop asks for retraining; a candidate's is the canary's business (it rolls back)
    assert "retrain" in by_name["production_ctr_drop"].sinks and "retrain" not in by_name["ctr_drop"].sinks
    assert config.webhook.url is None
    calls = []
    manager = AlertManager.from_config(config, retrain=calls.append)
    for _ in range(2):
        manager.evaluate({"drift.max_psi": 0.25, "ctr.production": 0.07})
    assert [n.rule for n in calls] == ["data_drift_critical"]


GOOD = {"name": "r1", "metric": "drift.max_psi", "comparison": ">", "threshold": 0.2}


@pytest.mark.parametrize("change, message", [
    ({"comparison": "=>"}, "rule 'r1' (rules[0]): field 'comparison': expected one of >, <, >=, <=, got '=>'"),
    ({"severity": "urgent"}, "rule 'r1' (rules[0]): field 'severity': expected one of info, warning, critical"),
    ({"for": 0}, "rule 'r1' (rules[0]): field 'for': expected a whole number of consecutive evaluations"),
    ({"for": "5m"}, "field 'for': expected a whole number"),
    ({"threshold": "high"}, "rule 'r1' (rules[0]): field 'threshold': expected a number, got 'high'"),
    ({"sinks": ["email"]}, "field 'sinks': expected a non-empty list of distinct sinks from log, webhook, retrain"),
    ({"labels": {"variant": 1}}, "field 'labels': expected a mapping of strings to strings"),
    ({"treshold": 1}, "rule 'r1' (rules[0]): unknown field(s) ['treshold']"),
    ({"threshold": None}, "field 'threshold': expected a number"),
    ({"name": "has space"}, "rule 'has space' (rules[0]): field 'name': expected a non-empty name"),
    ({"metric": "ctr.{variant}", "labels": {"variant": "x"}}, "labels ['variant'] are also placeholders"),
])
def test_bad_rules_name_the_rule_and_field(tmp_path, change, message):
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump({"rules": [{**GOOD, **change}]}))
    with pytest.raises(ConfigError) as err:
        load_alert_config(path)
    assert message in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("raw, message", [
    ({"rules": [GOOD, GOOD]}, "rule 'r1' is defined twice"),
    ({"rules": [{k: v for k, v in GOOD.items() if k != "threshold"}]}, "rule 'r1' (rules[0]): field 'threshold' is "
                                                                       "missing"),
    ({"rules": []}, "'rules' must be a non-empty list"),
    ({"rule": [GOOD]}, "unknown top-level key(s) ['rule']"),
    ({"rules": [GOOD], "webhook": {"url": "ftp://x"}}, "webhook.url: expected an http(s) URL or null"),
    ({"rules": [GOOD], "webhook": {"retries": -1}}, "webhook.retries: expected a whole number >= 0"),
    ([GOOD], "expected a mapping with 'rules'"),
])
def test_bad_files(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_alert_config(raw, "x.yaml")
    assert message in str(err.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_alert_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("rules: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_alert_config(tmp_path / "bad.yaml")
