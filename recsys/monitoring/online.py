"""Model metrics from what the serving app logged: click-through and purchase rates per variant over sliding
windows (from /feedback), the served score distribution per variant and the live model inputs (from the
request log), with Polars over the JSON lines the app writes under its event log folder.

The variant of a fed-back event is read from its request id (`serving.feedback.variant_of`: two bits of the
id), so no join with the request log is needed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from serving.feedback import EVENT_GLOB as FEEDBACK
from serving.feedback import TAG_BITS, VARIANT_BITS, VARIANT_CODES
from serving.requestlog import REQUEST_GLOB as REQUESTS


def _scan(root: str | Path, pattern: str) -> pl.LazyFrame | None:
    files = sorted(Path(root).glob(pattern))
    return pl.scan_ndjson(files, infer_schema_length=10_000) if files else None


def variant_expr(request_id: str = "request_id") -> pl.Expr:
    """`serving.feedback.variant_of` as a Polars expression."""
    code = (pl.col(request_id) // (2**TAG_BITS)) % (2**VARIANT_BITS)
    names = pl.lit("unknown")
    for n, name in reversed(list(enumerate(VARIANT_CODES))):
        names = pl.when(code == n).then(pl.lit(name)).otherwise(names)
    return names.alias("variant")


def feedback(root: str | Path) -> pl.LazyFrame | None:
    """Fed-back events with their time and variant; None before the first."""
    frame = _scan(root, FEEDBACK)
    if frame is None:
        return None
    return frame.with_columns(pl.col("timestamp").str.to_datetime(time_zone="UTC"), variant_expr())


def requests(root: str | Path) -> pl.LazyFrame | None:
    """Logged answers (one row each) with their time; None before the first."""
    frame = _scan(root, REQUESTS)
    return None if frame is None else frame.with_columns(pl.col("timestamp").str.to_datetime(time_zone="UTC"))


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
