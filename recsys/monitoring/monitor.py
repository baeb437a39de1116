"""One monitoring evaluation over what the serving app logged, and the alerts it raises.

A snapshot of metrics over the trailing window, from the app's logs under its event-log folder:

* ``ctr.<variant>``, ``purchase_rate.<variant>``, ``impressions.<variant>``: fed-back events per variant (a
  variant with fewer than ``min_impressions`` impressions in the window gets no CTR: too noisy to judge);
* ``serving.requests``, ``serving.degraded_share`` (answers that lost a stage: degraded, since the app answers
  every request), ``serving.p99_ms`` (the app's own total time per answer);
* ``drift.*`` (`recsys.monitoring.drift.drift_summary`): the logged model inputs of the window against the
  training dataset's profile (`reference_profile`), once the window holds ``min_drift_rows`` of them (PSI of a
  handful of rows is noise); ``drift.rows`` says how many there were.

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

MAX_DRIFT_ROWS = 100_000  # logged answers kept for the drift check: the newest, however long the window


@dataclass
class Snapshot:
    at: datetime
    metrics: dict[str, Any]
    notifications: list[Notification]


def reference_profile(dataset, schema, split: str = "test") -> dict[str, dict]:
    """The reference live model inputs are compared with: the profile of the dataset's ranking examples of
    ``split``. ``train`` is the manifest's own profile; ``test`` (the most recent days, the default) is profiled
    now by the same code. Counts that grow with the shop's history (a user's views so far) sit higher in recent
    examples than over the whole training window, and live traffic looks like the recent days."""
    from recsys.data.features import task_features
    from recsys.data.profile import profile_features

    if split == "train":
        return dataset.manifest.profile.get("ranking", {})
    if split not in ("val", "test"):
        raise ValueError(f"reference split must be train, val or test, got {split!r}")
    return profile_features(pl.scan_parquet(dataset.shards("ranking", split)), task_features(schema, "ranking"))


def snapshot(events: pl.DataFrame | None, logged: pl.DataFrame | None, profile: dict[str, dict], start: datetime,
             now: datetime, *, min_impressions: int = 100, min_drift_rows: int = 200,
             skip_features: tuple[str, ...] = ()) -> dict[str, Any]:
    """The metrics of ``(start, now]`` from fed-back events and logged answers (`online.LiveLog` frames);
    ``skip_features`` are left out of the drift check."""
    metrics: dict[str, Any] = {}
    if events is not None:
        for row in online.rates_by_variant(events.lazy(), now - start, now).iter_rows(named=True):
            metrics[f"impressions.{row['variant']}"] = row["impressions"]
            if row["impressions"] >= min_impressions:
                metrics[f"ctr.{row['variant']}"] = row["ctr"]
                metrics[f"purchase_rate.{row['variant']}"] = row["purchase_rate"]
    if logged is not None:
        recent = logged.lazy().filter((pl.col("timestamp") > start) & (pl.col("timestamp") <= now))
        stats = recent.select(pl.len().alias("n"), pl.col("degraded").mean().alias("degraded_share"),
                              pl.col("total_ms").quantile(0.99).alias("p99")).collect().row(0, named=True)
        metrics["serving.requests"] = stats["n"]
        if stats["n"]:
            metrics["serving.degraded_share"] = stats["degraded_share"]
            metrics["serving.p99_ms"] = stats["p99"]
            live = online.live_inputs(recent)
            names = [n for n in live.collect_schema().names() if n in profile and n not in skip_features]
            metrics["drift.rows"] = rows = live.select(pl.len()).collect().item() if names else 0
            if names and rows >= min_drift_rows:
                metrics |= drift_summary(feature_drift(profile, live, names))
    return metrics


class Monitor:
    def __init__(self, event_log: str | Path, profile: dict[str, dict], rules: str | Path,
                 window: timedelta = timedelta(minutes=15), state_file: str | Path | None = None,
                 trigger_file: str | Path | None = None, history_file: str | Path | None = None,
                 webhook_url: str | None = None, min_impressions: int = 100, min_drift_rows: int = 200,
                 skip_features: tuple[str, ...] = ()):
        self.event_log, self.profile, self.window = event_log, profile, window
        # each log followed incrementally, its window's rows in memory (drift looks at the newest max_drift_rows)
        self.feedback = online.feedback_log(event_log, window)
        self.requests = online.request_log(event_log, window, max_rows=MAX_DRIFT_ROWS)
        self.limits = {"min_impressions": min_impressions, "min_drift_rows": min_drift_rows,
                       "skip_features": tuple(skip_features)}
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

    def evaluate(self, now: datetime | None = None, since: datetime | None = None) -> Snapshot:
        """One snapshot over ``(since, now]`` (default: the trailing window), the rules run on it.

        A caller that knows what it sent (a test, a simulation) passes ``since`` to judge exactly that traffic.
        """
        now = now or datetime.now(UTC)
        start = max(since, now - self.window) if since is not None else now - self.window
        metrics = snapshot(self.feedback.refresh(now), self.requests.refresh(now), self.profile, start, now,
                           **self.limits)
        notifications = self.alerts.evaluate(metrics, at=now.timestamp())
        if self.history_file is not None:
            self.history_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.history_file, "a") as f:
                f.write(json.dumps({"at": now.isoformat(), "metrics": metrics,
                                    "alerts": [n.to_dict() for n in notifications]}, default=str) + "\n")
        return Snapshot(now, metrics, notifications)
