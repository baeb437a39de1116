"""Alert rules: threshold rules on metric snapshots, read from YAML (``configs/monitoring/alerts.yaml``).

A rule compares one metric of a snapshot with a threshold; its ``for`` is a number of consecutive breaching
evaluations before it fires (`recsys.monitoring.alerts.AlertManager` evaluates them). A metric may hold
``{placeholders}``, each matching one dot-free segment of a metric key and becoming a label. A bad file gets
one `ConfigError` naming the file, the rule and the field.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recsys.config import ConfigError

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le}
SEVERITIES = ("info", "warning", "critical")
SINKS = ("log", "webhook", "retrain")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class AlertRule:
    """One threshold rule.

    Attributes:
        name: unique rule name (part of the alert's key).
        metric: key in the metrics snapshot; ``{label}`` placeholders match one dot-free segment each.
        comparison: ``>``, ``<``, ``>=`` or ``<=``: the rule breaches when ``value <comparison> threshold``.
        threshold: the number compared with.
        for_: consecutive breaching evaluations before the alert fires (YAML key ``for``; default 1).
        severity: info, warning or critical.
        sinks: where notifications go: log, webhook, retrain (the retrain sink only gets firing alerts).
        labels: extra labels, copied onto the alert (and part of its key).
        description: one line for people, sent with the notification.
    """

    name: str
    metric: str
    comparison: str
    threshold: float
    for_: int = 1
    severity: str = "warning"
    sinks: tuple[str, ...] = ("log",)
    labels: dict[str, str] = field(default_factory=dict)
    description: str = ""

    def matches(self, metrics: Mapping[str, Any]) -> list[tuple[str, dict[str, str], float]]:
        """(metric key, labels, value) for each numeric metric this rule applies to."""
        if not _PLACEHOLDER.search(self.metric):
            value = metrics.get(self.metric)
            return [(self.metric, dict(self.labels), float(value))] if _is_number(value) else []
        pattern = re.compile("^" + _PLACEHOLDER.sub(lambda m: f"(?P<{m.group(1)}>[^.]+)",
                                                    re.escape(self.metric).replace(r"\{", "{").replace(r"\}", "}"))
                             + "$")
        out = []
        for key, value in metrics.items():
            match = pattern.match(key)
            if match and _is_number(value):
                out.append((key, {**self.labels, **match.groupdict()}, float(value)))
        return sorted(out, key=lambda t: t[0])

    def breaches(self, value: float) -> bool:
        return COMPARISONS[self.comparison](value, self.threshold)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class WebhookSettings:
    url: str | None = None  # where notifications are POSTed as JSON; None = no webhook
    timeout_s: float = 5.0  # per attempt
    retries: int = 3  # further attempts after a failed one (connection error, timeout or 5xx)
    backoff_s: float = 0.5  # wait before retry i: backoff_s * 2**i


@dataclass(frozen=True)
class AlertConfig:
    rules: tuple[AlertRule, ...]
    webhook: WebhookSettings = field(default_factory=WebhookSettings)


# ---- loading ----

_RULE_KEYS = {"name", "metric", "comparison", "threshold", "for", "severity", "sinks", "labels", "description"}
_REQUIRED = ("name", "metric", "comparison", "threshold")


def _rule(raw: Any, index: int, source: str) -> AlertRule:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: rules[{index}]: expected a mapping with {sorted(_RULE_KEYS)}, got {raw!r}")
    name = raw.get("name")
    where = f"{source}: rule {name!r} (rules[{index}])" if isinstance(name, str) else f"{source}: rules[{index}]"

    def bad(key: str, expected: str) -> ConfigError:
        return ConfigError(f"{where}: field {key!r}: expected {expected}, got {raw.get(key)!r}")

    unknown = sorted(set(raw) - _RULE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; expected some of {sorted(_RULE_KEYS)}")
    for key in _REQUIRED:
        if key not in raw:
            raise ConfigError(f"{where}: field {key!r} is missing")
    if not isinstance(name, str) or not _NAME.match(name):
        raise bad("name", "a non-empty name of letters, digits, '_', '.', '-'")
    metric = raw["metric"]
    if not isinstance(metric, str) or not metric.strip():
        raise bad("metric", "a metric key such as drift.max_psi or ctr.{variant}")
    if raw["comparison"] not in COMPARISONS:
        raise bad("comparison", f"one of {', '.join(COMPARISONS)}")
    if not _is_number(raw["threshold"]):
        raise bad("threshold", "a number")
    for_ = raw.get("for", 1)
    if isinstance(for_, bool) or not isinstance(for_, int) or for_ < 1:
        raise bad("for", "a whole number of consecutive evaluations >= 1")
    severity = raw.get("severity", "warning")
    if severity not in SEVERITIES:
        raise bad("severity", f"one of {', '.join(SEVERITIES)}")
    sinks = raw.get("sinks", ["log"])
    if (not isinstance(sinks, list) or not sinks or any(s not in SINKS for s in sinks)
            or len(set(sinks)) != len(sinks)):
        raise bad("sinks", f"a non-empty list of distinct sinks from {', '.join(SINKS)}")
    labels = raw.get("labels", {}) or {}
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise bad("labels", "a mapping of strings to strings (quote numbers)")
    clash = sorted(set(_PLACEHOLDER.findall(metric)) & set(labels))
    if clash:
        raise ConfigError(f"{where}: labels {clash} are also placeholders of metric {metric!r}")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise bad("description", "a string")
    return AlertRule(name=name, metric=metric, comparison=raw["comparison"], threshold=float(raw["threshold"]),
                     for_=for_, severity=severity, sinks=tuple(sinks), labels=dict(labels), description=description)


def _webhook(raw: Any, source: str) -> WebhookSettings:
    if raw is None:
        return WebhookSettings()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: webhook: expected a mapping with url, timeout_s, retries, backoff_s")
    unknown = sorted(set(raw) - {"url", "timeout_s", "retries", "backoff_s"})
    if unknown:
        raise ConfigError(f"{source}: webhook: unknown field(s) {unknown}; expected url, timeout_s, retries, backoff_s")
    url = raw.get("url")
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
        raise ConfigError(f"{source}: webhook.url: expected an http(s) URL or null, got {url!r}")
    for key, minimum in (("timeout_s", 1e-9), ("backoff_s", 0.0)):
        if key in raw and (not _is_number(raw[key]) or raw[key] < minimum):
            raise ConfigError(f"{source}: webhook.{key}: expected a positive number of seconds, got {raw[key]!r}")
    retries = raw.get("retries", 3)
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"{source}: webhook.retries: expected a whole number >= 0, got {retries!r}")
    return WebhookSettings(url=url, timeout_s=float(raw.get("timeout_s", 5.0)), retries=retries,
                           backoff_s=float(raw.get("backoff_s", 0.5)))


def parse_alert_config(raw: Any, source: str = "<dict>") -> AlertConfig:
    """Check a parsed rules file (``{"rules": [...], "webhook": {...}}``); `ConfigError` names rule and field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with 'rules' (and optionally 'webhook') at the top level")
    unknown = sorted(set(raw) - {"rules", "webhook"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key(s) {unknown}; expected 'rules' and 'webhook'")
    rules_raw = raw.get("rules")
    if not isinstance(rules_raw, list) or not rules_raw:
        raise ConfigError(f"{source}: 'rules' must be a non-empty list of rules")
    rules = tuple(_rule(r, i, source) for i, r in enumerate(rules_raw))
    seen: set[str] = set()
    for r in rules:
        if r.name in seen:
            raise ConfigError(f"{source}: rule {r.name!r} is defined twice; rule names key the alerts")
        seen.add(r.name)
    return AlertConfig(rules=rules, webhook=_webhook(raw.get("webhook"), source))


def load_alert_config(path: str | Path) -> AlertConfig:
    """Read and check a rules file such as ``configs/monitoring/alerts.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"alert rules file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_alert_config(raw, str(path))
