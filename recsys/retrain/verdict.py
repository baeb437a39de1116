"""The canary's verdict: is the candidate's click-through rate higher than production's, with users as the unit.

The canary assigns users, not impressions, to a variant, and one user's clicks go together, so the CTR (a ratio
metric, clicks / impressions summed over users) gets the delta method's variance over users; treating impressions
as independent would overstate the evidence.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import numpy as np


def _ratio(per_user: np.ndarray) -> tuple[float, float]:
    """CTR = Σ clicks / Σ impressions over users, and its delta-method variance."""
    clicks, shown = per_user[:, 0].astype(float), per_user[:, 1].astype(float)
    ctr = clicks.sum() / shown.sum()
    if len(per_user) < 2:
        return ctr, math.inf
    cov = np.cov(clicks, shown)  # ddof 1
    return ctr, (cov[0, 0] - 2 * ctr * cov[0, 1] + ctr**2 * cov[1, 1]) / (len(per_user) * shown.mean() ** 2)


def ctr_test(candidate: np.ndarray, production: np.ndarray) -> tuple[float, float]:
    """(z, one-sided p-value) of "the candidate's click-through rate is higher than production's".

    Args:
        candidate, production: one row per user, ``(clicks, impressions)``.
    """
    (c, var_c), (p, var_p) = _ratio(candidate), _ratio(production)
    se = math.sqrt(var_c + var_p)
    if not se > 0:
        return 0.0, 0.5 if c == p else float(c < p)
    z = (c - p) / se
    return z, 0.5 * math.erfc(z / math.sqrt(2))


def per_user_counts(event_log: str | Path, since: datetime, now: datetime) -> dict[str, np.ndarray]:
    """Per variant, one ``(clicks, impressions)`` row per user over ``(since, now]``, from the app's feedback log."""
    import polars as pl

    from recsys.monitoring import online

    events = online.feedback(event_log)
    if events is None:
        return {}
    rows = (events.filter((pl.col("timestamp") > since) & (pl.col("timestamp") <= now))
            .group_by("variant", "user_id")
            .agg((pl.col("event_type") == "click").sum().alias("clicks"),
                 (pl.col("event_type") == "impression").sum().alias("impressions"))
            .filter(pl.col("impressions") > 0).collect())
    return {v: rows.filter(pl.col("variant") == v).select("clicks", "impressions").to_numpy()
            for v in rows["variant"].unique().to_list()}
