"""One monitoring evaluation over what the serving app logged, and the alerts it raises.

A snapshot of metrics over the trailing window, from the app's logs under its event-log folder:

* ``ctr.<variant>``, ``purchase_rate.<variant>``, ``impressions.<variant>``: fed-back events per variant (a
  variant with fewer than ``min_impressions`` impressions in the window gets no CTR: too noisy to judge);
* ``serving.requests``, ``serving.error_rate`` (answers that lost a stage: degraded, since the app answers
  every request), ``serving.p99_ms`` (the app's own total time per answer);
* ``drift.*`` (`recsys.monitoring.drift.drift_summary`): the logged model inputs of the window against the
  training dataset's profile.

`Monitor.evaluate` takes a snapshot, runs the alert rules on it (log, webhook and the retraining trigger: a JSON
line appended to ``trigger_file`` for the loop to pick up) and appends the snapshot to ``history_file``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from recsys.monitoring import online
from recsys.monitoring.alerts import AlertManager, Notification
from recsys.monitoring.drift import drift_summary, feature_drift
from recsys.monitoring.rules import load_alert_config


@dataclass
class Snapshot:
    at: datetime
    metrics: dict[str, Any]
    notifications: list[Notification]


def snapshot(event_log: str | Path, profile: dict[str, dict], window: timedelta, now: datetime,
             min_impressions: int = 100) -> dict[str, Any]:
    """The metrics of the window ``(now - window, now]``."""
    metrics: dict[str, Any] = {}
    events = online.feedback(event_log)
    if events is not None:
        for row in online.rates_by_variant(events, window, now).iter_rows(named=True):
            metrics[f"impressions.{row['variant']}"] = row["impressions"]
            if row["impressions"] >= min_impressions:
                metrics[f"ctr.{row['variant']}"] = row["ctr"]
                metrics[f"purchase_rate.{row['variant']}"] = row["purchase_rate"]
    logged = online.requests(event_log)
    if logged is not None:
        recent = logged.filter((pl.col("timestamp") > now - window) & (pl.col("timestamp") <= now))
        stats = recent.select(pl.len().alias("n"), pl.col("degraded").mean().alias("error_rate"),
                              pl.col("total_ms").quantile(0.99).alias("p99")).collect().row(0, named=True)
        metrics["serving.requests"] = stats["n"]
        if stats["n"]:
            metrics["serving.error_rate"] = stats["error_rate"]
            metrics["serving.p99_ms"] = stats["p99"]
            live = online.live_inputs(recent)
            names = [n for n in live.collect_schema().names() if n in profile]
            if names:
                metrics |= drift_summary(feature_drift(profile, live, names))
    return metrics


class Monitor:
    def __init__(self, event_log: str | Path, profile: dict[str, dict], rules: str | Path,
                 window: timedelta = timedelta(minutes=15), state_file: str | Path | None = None,
                 trigger_file: str | Path | None = None, history_file: str | Path | None = None,
                 webhook_url: str | None = None, min_impressions: int = 100):
        self.event_log, self.profile, self.window, self.min_impressions = event_log, profile, window, min_impressions
        self.trigger_file = Path(trigger_file) if trigger_file else None
        self.history_file = Path(history_file) if history_file else None
        self.alerts = AlertManager.from_config(load_alert_config(rules), retrain=self._trigger,
                                               state_path=state_file, webhook_url=webhook_url)

    def _trigger(self, notification: Notification) -> None:
        """The retraining trigger: one JSON line per firing alert that asks for it."""
        if self.trigger_file is None:
            return
        self.trigger_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.trigger_file, "a") as f:
            f.write(json.dumps({"at": notification.at, "reason": notification.summary,
                                "alert": notification.to_dict()}) + "\n")

    def evaluate(self, now: datetime | None = None) -> Snapshot:
        now = now or datetime.now(UTC)
        metrics = snapshot(self.event_log, self.profile, self.window, now, self.min_impressions)
        notifications = self.alerts.evaluate(metrics, at=now.timestamp())
        if self.history_file is not None:
            self.history_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.history_file, "a") as f:
                f.write(json.dumps({"at": now.isoformat(), "metrics": metrics,
                                    "alerts": [n.to_dict() for n in notifications]}, default=str) + "\n")
        return Snapshot(now, metrics, notifications)
