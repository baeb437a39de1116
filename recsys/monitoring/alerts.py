"""Alerting on metric snapshots: de-duplicated alerts from threshold rules (`recsys.monitoring.rules`), sent to
log / webhook / callback sinks.

A rule (``configs/monitoring/alerts.yaml``) compares one metric of the snapshot the caller passes to
`AlertManager.evaluate` with a threshold. Its ``for`` is a number of *consecutive evaluations* that must
breach before the alert fires (not a duration: the caller decides the cadence, and a count means the same
at any cadence, in tests too). An alert fires once, stays quiet while the rule keeps breaching, and sends
one ``resolved`` notification when it stops; a metric missing from a snapshot changes nothing (no data is
not a recovery).

An alert is keyed by the rule name and its labels. A metric may hold ``{placeholders}``, each matching one
dot-free segment of a metric key and becoming a label: ``ctr.{variant}`` over ``{"ctr.production": ...,
"ctr.candidate": ...}`` gives one alert per variant.

Alert state can be kept in a JSON file, so a restarted process neither re-sends a firing alert nor
forgets to resolve it. Notifications are delivered before the state is saved (at least once).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from recsys.io import atomic_write_text
from recsys.monitoring.rules import AlertConfig, AlertRule, WebhookSettings

logger = logging.getLogger("recsys.alerts")
_LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.ERROR}

# ---- notifications and sinks ----

def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Notification:
    """An alert starting (``status="firing"``) or ending (``"resolved"``)."""

    status: str
    rule: str
    severity: str
    metric: str  # the metric key that matched
    value: float  # its value in the evaluation that fired or resolved the alert
    comparison: str
    threshold: float
    labels: dict[str, str]
    started_at: float  # first breaching evaluation (epoch seconds)
    at: float  # this evaluation
    description: str = ""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.rule, self.labels)

    @property
    def summary(self) -> str:
        if self.status == "firing":
            return (f"[{self.severity}] {self.fingerprint} firing: {self.metric} = {self.value:.6g} "
                    f"{self.comparison} {self.threshold:g}")
        return (f"[{self.severity}] {self.fingerprint} resolved: {self.metric} = {self.value:.6g}, "
                f"no longer {self.comparison} {self.threshold:g}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fingerprint": self.fingerprint, "summary": self.summary,
                "started_at_iso": _iso(self.started_at), "at_iso": _iso(self.at)}


def fingerprint(rule: str, labels: Mapping[str, str]) -> str:
    """The alert's key: ``rule{a="x",b="y"}`` (labels sorted), or the bare rule name without labels."""
    if not labels:
        return rule
    return rule + "{" + ",".join(f'{k}="{labels[k]}"' for k in sorted(labels)) + "}"


class Sink(Protocol):
    def send(self, notification: Notification) -> None: ...


class LogSink:
    """Python logging (logger ``recsys.alerts``): firing at the severity's level, resolved at INFO."""

    def __init__(self, log: logging.Logger | None = None) -> None:
        self.log = log or logger

    def send(self, notification: Notification) -> None:
        level = _LOG_LEVELS[notification.severity] if notification.status == "firing" else logging.INFO
        self.log.log(level, "alert %s", notification.summary)


class WebhookSink:
    """POST each notification as JSON; retried on connection errors, timeouts and 5xx; failures logged."""

    def __init__(self, url: str, timeout_s: float = 5.0, retries: int = 3, backoff_s: float = 0.5) -> None:
        self.url, self.timeout_s, self.retries, self.backoff_s = url, timeout_s, retries, backoff_s

    @classmethod
    def from_settings(cls, settings: WebhookSettings) -> WebhookSink:
        if settings.url is None:
            raise ValueError("webhook settings have no url")
        return cls(settings.url, settings.timeout_s, settings.retries, settings.backoff_s)

    def send(self, notification: Notification) -> bool:
        """True when the receiver answered 2xx; never raises."""
        body = json.dumps(notification.to_dict()).encode()
        error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    response.read()
                return True
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code}"
                if exc.code < 500:
                    break  # the receiver refuses this payload; sending it again will not help
            except (urllib.error.URLError, TimeoutError, OSError) as exc:
                error = str(getattr(exc, "reason", exc))
        logger.error("alert webhook %s: %s not delivered after %d attempt(s): %s", self.url,
                     notification.fingerprint, attempt + 1, error)
        return False


class CallbackSink:
    """Call ``fn(notification)``, e.g. the retraining trigger; by default only for firing alerts."""

    def __init__(self, fn: Callable[[Notification], Any], on_resolved: bool = False) -> None:
        self.fn, self.on_resolved = fn, on_resolved

    def send(self, notification: Notification) -> None:
        if notification.status == "firing" or self.on_resolved:
            self.fn(notification)


# ---- the manager ----

class AlertManager:
    """Evaluates rules over successive metric snapshots; fires, de-duplicates and resolves alerts.

    Args:
        rules: the rules (`load_alert_config(...).rules`).
        sinks: sink name -> sink; ``log`` is added when missing. A sink a rule names but nobody registered is
            skipped, with one warning here.
        state_path: JSON file keeping pending and firing alerts across restarts; None = in memory only.
    """

    def __init__(self, rules: tuple[AlertRule, ...] | list[AlertRule], sinks: Mapping[str, Sink] | None = None,
                 state_path: str | Path | None = None) -> None:
        self.rules = tuple(rules)
        self.sinks: dict[str, Sink] = {"log": LogSink(), **(sinks or {})}
        missing: dict[str, list[str]] = {}
        for rule in self.rules:
            for name in rule.sinks:
                if name not in self.sinks:
                    missing.setdefault(name, []).append(rule.name)
        for name, rule_names in missing.items():
            logger.warning("alert sink %r is not configured: rules %s will not send to it", name, rule_names)
        self.state_path = Path(state_path) if state_path is not None else None
        self.state: dict[str, dict[str, Any]] = self._load()

    @classmethod
    def from_config(cls, config: AlertConfig, *, retrain: Callable[[Notification], Any] | None = None,
                    state_path: str | Path | None = None, webhook_url: str | None = None) -> AlertManager:
        """Build the sinks a rules file describes: log, webhook (its ``url`` or ``webhook_url``), retrain."""
        sinks: dict[str, Sink] = {"log": LogSink()}
        settings = config.webhook
        if webhook_url is not None:
            settings = WebhookSettings(webhook_url, settings.timeout_s, settings.retries, settings.backoff_s)
        if settings.url is not None:
            sinks["webhook"] = WebhookSink.from_settings(settings)
        if retrain is not None:
            sinks["retrain"] = CallbackSink(retrain)
        return cls(config.rules, sinks, state_path)

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.state_path is None or not self.state_path.exists():
            return {}
        try:
            alerts = json.loads(self.state_path.read_text())["alerts"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("alert state %s unreadable (%s): starting with no alerts", self.state_path, exc)
            return {}
        names = {r.name for r in self.rules}
        dropped = sorted(fp for fp, a in alerts.items() if a.get("rule") not in names)
        if dropped:
            logger.info("alert state: dropping %s (their rules are gone)", dropped)
        return {fp: a for fp, a in alerts.items() if fp not in dropped}

    def _save(self) -> None:
        if self.state_path is None:
            return
        atomic_write_text(self.state_path, json.dumps({"version": 1, "alerts": self.state}, indent=1,
                                                      sort_keys=True))

    @property
    def firing(self) -> list[str]:
        """Fingerprints of the alerts firing now."""
        return sorted(fp for fp, a in self.state.items() if a["status"] == "firing")

    def evaluate(self, metrics: Mapping[str, Any], at: float | None = None) -> list[Notification]:
        """Apply every rule to one snapshot taken at ``at`` (epoch seconds, default now); send and return
        the notifications it caused (alerts starting to fire or resolving)."""
        now = time.time() if at is None else float(at)
        out = []
        for rule in self.rules:
            for key, labels, value in rule.matches(metrics):
                fp = fingerprint(rule.name, labels)
                alert = self.state.get(fp)
                if rule.breaches(value):
                    if alert is None:
                        alert = self.state[fp] = {"rule": rule.name, "labels": labels, "status": "pending",
                                                  "breaches": 0, "started_at": now}
                    alert.update(breaches=alert["breaches"] + 1, value=value, metric=key, last_at=now)
                    if alert["status"] == "pending" and alert["breaches"] >= rule.for_:
                        alert.update(status="firing", fired_at=now)
                        out.append((rule, self._notification("firing", rule, alert, key, value, now)))
                elif alert is not None:
                    if alert["status"] == "firing":
                        out.append((rule, self._notification("resolved", rule, alert, key, value, now)))
                    del self.state[fp]
        for rule, notification in out:
            self._dispatch(rule, notification)
        self._save()
        return [n for _, n in out]

    @staticmethod
    def _notification(status: str, rule: AlertRule, alert: dict[str, Any], key: str, value: float,
                      now: float) -> Notification:
        return Notification(status=status, rule=rule.name, severity=rule.severity, metric=key, value=value,
                            comparison=rule.comparison, threshold=rule.threshold, labels=dict(alert["labels"]),
                            started_at=alert["started_at"], at=now, description=rule.description)

    def _dispatch(self, rule: AlertRule, notification: Notification) -> None:
        for name in rule.sinks:
            sink = self.sinks.get(name)
            if sink is None:
                continue
            try:
                sink.send(notification)
            except Exception:  # a sink must never break the monitoring loop
                logger.exception("alert sink %r failed on %s", name, notification.fingerprint)
