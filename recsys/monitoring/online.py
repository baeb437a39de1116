"""Model metrics from what the serving app logged: click-through and purchase rates per variant over sliding
windows (from /feedback), the served score distribution per variant and the live model inputs (from the request
log), with Polars over the JSON lines the app writes under its event-log folder (`recsys.eventlog`).

`LiveLog` follows one of those logs and keeps only its trailing window in memory, reading each appended byte once
(a monitor that polls every few seconds does not rescan the log). Torn or unparseable lines are set aside with
their file and line (``bad``) and logged, never fail a read. Fed-back events are counted once per ``event_id``: a
client's retry carries the same id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from recsys.eventlog.feedback import FEEDBACK_GLOB
from recsys.eventlog.jsonl import LINE, BadLine, JsonlTail
from recsys.eventlog.requests import REQUEST_GLOB

log = logging.getLogger(__name__)
MAX_BAD_KEPT = 1000


def _timestamps(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.drop(LINE).with_columns(pl.col("timestamp").str.to_datetime(time_zone="UTC", time_unit="us"))


def once_per_event(frame: pl.DataFrame) -> pl.DataFrame:
    """Fed-back events without repeats: the first row of each ``event_id`` (rows without one are all kept)."""
    if "event_id" not in frame.columns:
        return frame
    return frame.filter(pl.col("event_id").is_null() | pl.col("event_id").is_first_distinct())


class LiveLog:
    """The rows of one of the app's logs whose timestamp lies within ``horizon`` of the latest `refresh` (all rows
    when ``horizon`` is None), at most ``max_rows`` of them (the newest)."""

    def __init__(self, root: str | Path, pattern: str, prepare: Callable[[pl.DataFrame], pl.DataFrame],
                 horizon: timedelta | None = None, max_rows: int | None = None):
        self._tail = JsonlTail(Path(root), pattern)
        self._prepare, self.horizon, self.max_rows = prepare, horizon, max_rows
        self.frame: pl.DataFrame | None = None
        self.rows_read = 0  # rows read since the start (the window may have dropped them since)
        self.bad: list[BadLine] = []  # the first MAX_BAD_KEPT lines that could not be read

    def refresh(self, now: datetime | None = None) -> pl.DataFrame | None:
        new, bad = self._tail.poll()
        for b in bad:
            log.warning("%s line %d set aside: %s", b.file, b.line, b.reason)
        self.bad += bad[: MAX_BAD_KEPT - len(self.bad)]
        if new is not None:
            new = self._prepare(new)
            self.rows_read += new.height
            self.frame = new if self.frame is None else pl.concat([self.frame, new], how="diagonal_relaxed")
        if self.frame is not None:
            if self.horizon is not None and now is not None:
                self.frame = self.frame.filter(pl.col("timestamp") > now - self.horizon)
            if self.max_rows is not None and self.frame.height > self.max_rows:
                self.frame = self.frame.tail(self.max_rows)
        return self.frame


def feedback_log(root: str | Path, horizon: timedelta | None = None) -> LiveLog:
    """Fed-back events (timestamp parsed, once per event id)."""
    return LiveLog(root, FEEDBACK_GLOB, lambda f: once_per_event(_timestamps(f)), horizon)


def request_log(root: str | Path, horizon: timedelta | None = None, max_rows: int | None = None) -> LiveLog:
    """Logged answers (timestamp parsed)."""
    return LiveLog(root, REQUEST_GLOB, _timestamps, horizon, max_rows)


def feedback(root: str | Path) -> pl.LazyFrame | None:
    """Every fed-back event, with its time and variant; None before the first."""
    frame = feedback_log(root).refresh()
    return None if frame is None else once_per_event(frame).lazy()


def requests(root: str | Path) -> pl.LazyFrame | None:
    """Every logged answer (one row each) with its time; None before the first."""
    frame = request_log(root).refresh()
    return None if frame is None else frame.lazy()


def rates_by_variant(events: pl.LazyFrame, window: timedelta, now: datetime) -> pl.DataFrame:
    """Impressions, clicks, purchases, CTR (clicks / impressions) and purchase rate per variant over
    ``(now - window, now]``."""
    recent = events.filter((pl.col("timestamp") > now - window) & (pl.col("timestamp") <= now))
    return _rates(recent.group_by("variant")).sort("variant").collect()


def rates_over_time(events: pl.LazyFrame, every: timedelta, window: timedelta) -> pl.DataFrame:
    """The same rates per variant at every ``every``, each over the trailing ``window`` (sliding windows)."""
    frame = events.sort("timestamp").group_by_dynamic("timestamp", every=every, period=window,
                                                      offset=-window, group_by="variant", label="right")
    return _rates(frame).sort("timestamp", "variant").collect()


def _rates(grouped) -> pl.LazyFrame:
    count = {t: (pl.col("event_type") == t).sum().alias(f"{t}s") for t in ("impression", "click", "purchase")}
    return grouped.agg(*count.values()).with_columns(
        (pl.col("clicks") / pl.col("impressions")).alias("ctr"),
        (pl.col("purchases") / pl.col("impressions")).alias("purchase_rate"))


def score_distribution(logged: pl.LazyFrame, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)) -> pl.DataFrame:
    """Quantiles of the scores of served items, per variant (ranked answers only)."""
    scores = logged.filter(pl.col("scores").is_not_null()).explode("scores")
    return (scores.group_by("variant")
            .agg(pl.len().alias("scores"), *(pl.col("scores").quantile(q).alias(f"p{round(q * 100)}")
                                             for q in quantiles))
            .sort("variant").collect())


def live_inputs(logged: pl.LazyFrame, since: datetime | None = None) -> pl.LazyFrame:
    """The logged model inputs of known users, one column per input (cold-start answers have none), for drift
    against the training dataset's profile (`recsys.monitoring.drift.feature_drift`)."""
    frame = logged.filter(pl.col("inputs").is_not_null())
    if since is not None:
        frame = frame.filter(pl.col("timestamp") > since)
    return frame.select("inputs").unnest("inputs")
