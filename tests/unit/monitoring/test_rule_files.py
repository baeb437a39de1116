"""The shipped Prometheus rules and Grafana dashboard: valid structure, balanced PromQL that names only metrics
the serving app and Triton export (or the rules record), and every app metric on the dashboard."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "configs" / "monitoring" / "prometheus-rules.yaml"
DASHBOARD = ROOT / "configs" / "monitoring" / "grafana-dashboard.json"

APP_METRICS = {  # serving/metrics.py, as Prometheus exposes them
    "recsys_http_requests_total", "recsys_errors_total", "recsys_stage_latency_seconds_bucket",
    "recsys_degraded_responses_total", "recsys_variant_requests_total", "recsys_variant_errors_total",
    "recsys_variant_rank_latency_seconds_bucket", "recsys_feedback_events_total", "recsys_automatic_rollbacks_total",
}
TRITON_METRICS = {  # Triton's metrics endpoint (per model and version)
    "nv_inference_request_failure", "nv_inference_request_success", "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us", "nv_inference_count",
}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def balanced(expr: str) -> bool:
    """Brackets pair up and strings close (quotes inside strings ignored)."""
    stack, pairs, i = [], {")": "(", "]": "[", "}": "{"}, 0
    while i < len(expr):
        c = expr[i]
        if c in "\"'`":
            end = expr.find(c, i + 1)
            while end != -1 and expr[end - 1] == "\\":
                end = expr.find(c, end + 1)
            if end == -1:
                return False
            i = end
        elif c in "([{":
            stack.append(c)
        elif c in ")]}" and (not stack or stack.pop() != pairs[c]):
            return False
        i += 1
    return not stack


def metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression: identifiers that are not functions, keywords or label names."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges, $__rate_interval
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)  # label lists
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        if m.start() and (e[m.start() - 1].isdigit() or e[m.start() - 1] in ".$"):
            continue  # an exponent (1e3) or a variable
        if e[m.end():].lstrip().startswith("(") or m.group() in KEYWORDS:
            continue  # a function or aggregation
        names.add(m.group())
    return names


def test_metric_name_extraction():
    expr = ('histogram_quantile(0.99, sum by (stage, le) (rate(recsys_stage_latency_seconds_bucket{stage="rank"}'
            '[5m]))) > 1e3 and on(stage) x:y:z')
    assert metric_names(expr) == {"recsys_stage_latency_seconds_bucket", "x:y:z"}
    assert balanced(expr) and not balanced("sum(rate(x[5m])") and not balanced('x{a="b}')


@pytest.fixture(scope="module")
def groups():
    raw = yaml.safe_load(RULES.read_text())
    assert set(raw) == {"groups"} and isinstance(raw["groups"], list) and raw["groups"]
    return raw["groups"]


def test_prometheus_rule_structure(groups):
    names = [g["name"] for g in groups]
    assert len(set(names)) == len(names)
    for group in groups:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group["name"]
        if "interval" in group:
            assert DURATION.match(group["interval"])
        assert isinstance(group["rules"], list) and group["rules"], group["name"]
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule), rule
            assert set(rule) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}, rule
            assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule
            if "record" in rule:
                assert re.match(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$", rule["record"]) and ":" in rule["record"]
                assert "for" not in rule and "annotations" not in rule
            else:
                assert re.match(r"^[A-Za-z][A-Za-z0-9_]*$", rule["alert"])
                assert rule["labels"]["severity"] in ("info", "warning", "critical"), rule["alert"]
                assert "summary" in rule["annotations"], rule["alert"]
            if "for" in rule:
                assert DURATION.match(rule["for"]), rule
            for key in ("labels", "annotations"):
                assert all(isinstance(k, str) and isinstance(v, str) for k, v in rule.get(key, {}).items()), rule


def test_prometheus_exprs_name_only_known_metrics(groups):
    rules = [r for g in groups for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    used = set()
    for rule in rules:
        assert balanced(rule["expr"]), rule["expr"]
        names = metric_names(rule["expr"])
        assert names, rule["expr"]
        assert names <= APP_METRICS | TRITON_METRICS | recorded, names - APP_METRICS - TRITON_METRICS - recorded
        used |= names
    assert recorded <= used  # every recording rule is used by an alert
    alerts = {r["alert"] for r in rules if "alert" in r}
    assert {"RecsysRecommendErrorRate", "RecsysRecommendLatencyP99", "RecsysVariantCtrLow",
            "TritonInferenceFailures", "RecsysAutomaticRollback"} <= alerts


PROMTOOL = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")


def _promtool(*args: str) -> None:
    result = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@PROMTOOL
def test_promtool_accepts_the_rules_and_the_dashboard_queries(tmp_path):
    _promtool("check", "rules", str(RULES))
    # the dashboard's queries, with Grafana's variables filled in, as recording rules promtool parses
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"].replace("$__rate_interval", "5m").replace("$__range", "1h")
             for p in dash["panels"] for t in p.get("targets", [])]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e}
                                                        for i, e in enumerate(exprs)]}]}
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump(rules))
    _promtool("check", "rules", str(tmp_path / "dashboard.yaml"))


@PROMTOOL
def test_promtool_unit_test_ctr_and_error_rate(tmp_path):
    # per variant over 15m: production 60 clicks / 600 impressions = 0.1, candidate 15 / 600 = 0.025 (below 0.05)
    tests = {"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": 'recsys_feedback_events_total{variant="production",event_type="impression"}',
             "values": "0+40x60"},
            {"series": 'recsys_feedback_events_total{variant="production",event_type="click"}', "values": "0+4x60"},
            {"series": 'recsys_feedback_events_total{variant="candidate",event_type="impression"}',
             "values": "0+40x60"},
            {"series": 'recsys_feedback_events_total{variant="candidate",event_type="click"}', "values": "0+1x60"},
            {"series": 'recsys_http_requests_total{route="/recommend",status="200"}', "values": "0+95x60"},
            {"series": 'recsys_http_requests_total{route="/recommend",status="503"}', "values": "0+5x60"},
        ],
        "promql_expr_test": [
            {"expr": "recsys:variant_ctr:ratio_15m", "eval_time": "30m",
             "exp_samples": [{"labels": 'recsys:variant_ctr:ratio_15m{variant="candidate"}', "value": 0.025},
                             {"labels": 'recsys:variant_ctr:ratio_15m{variant="production"}', "value": 0.1}]},
            {"expr": "recsys:recommend_error_ratio:rate5m", "eval_time": "30m",
             "exp_samples": [{"labels": "recsys:recommend_error_ratio:rate5m", "value": 0.05}]},
        ],
        "alert_rule_test": [
            {"alertname": "RecsysVariantCtrLow", "eval_time": "20m", "exp_alerts": []},  # pending (for: 30m)
            {"alertname": "RecsysVariantCtrLow", "eval_time": "50m", "exp_alerts": [{
                "exp_labels": {"severity": "critical", "variant": "candidate"},
                "exp_annotations": {
                    "summary": "CTR of variant candidate is 2.5% over 15 minutes",
                    "description": "Floor set from the demo shop's training CTR (about 7.5%); set it from your "
                                   "own baseline."}}]},
            {"alertname": "RecsysCandidateCtrBelowProduction", "eval_time": "50m", "exp_alerts": [{
                "exp_labels": {"severity": "warning"},  # ignoring(variant) drops the label
                "exp_annotations": {"summary": "The candidate's CTR is more than 20% below production's"}}]},
        ],
    }]}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(tests))
    _promtool("test", "rules", str(tmp_path / "test.yaml"))


def test_grafana_dashboard():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    [variable] = [v for v in dash["templating"]["list"] if v["name"] == "datasource"]
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids)
    used = set()
    for panel in (p for p in panels if p["type"] != "row"):
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}" and target["refId"]
            assert balanced(target["expr"]), target["expr"]
            names = metric_names(target["expr"])
            assert names and names <= APP_METRICS | TRITON_METRICS, (panel["title"], names)
            used |= names
    assert used >= APP_METRICS, APP_METRICS - used  # every app metric has a panel
    assert {"nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us"} <= used
    titles = " ".join(p["title"].lower() for p in panels)
    for word in ("request rate", "error rate", "p50", "p95", "p99", "degraded", "ctr", "queue", "compute",
                 "rollbacks"):
        assert word in titles, word
