"""The canary's verdict: is the candidate's click-through rate higher than production's, with users as the unit.

The canary assigns users, not impressions, to a variant, and one user's clicks go together, so the CTR (a ratio
metric, clicks / impressions summed over users) gets the delta method's variance over users; treating impressions
as independent would overstate the evidence.
"""

from __future__ import annotations

import math
from collections import OrderedDict
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


class CanaryCounts:
    """Per variant, one ``(clicks, impressions)`` row per user over the fed-back events after ``since``, kept
    current by reading only what the app appended since the last `update` (memory: one row per user, and the
    newest ``remember`` event ids, against which a client's retry is counted once)."""

    def __init__(self, event_log: str | Path, since: datetime, remember: int = 200_000):
        from recsys.eventlog.feedback import FEEDBACK_GLOB
        from recsys.eventlog.jsonl import JsonlTail

        self._tail = JsonlTail(Path(event_log), FEEDBACK_GLOB)
        self.since = since
        self._totals: dict[tuple[str, int], list[int]] = {}
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._remember = remember

    def _fresh(self, ids: list[int | None]) -> list[bool]:
        keep = []
        for event_id in ids:
            if event_id is None:
                keep.append(True)
                continue
            keep.append(event_id not in self._seen)
            self._seen[event_id] = None
        while len(self._seen) > self._remember:
            self._seen.popitem(last=False)
        return keep

    def update(self) -> dict[str, np.ndarray]:
        import polars as pl

        new, _ = self._tail.poll()  # (torn lines are the monitor's to report)
        if new is not None and new.height and {"variant", "user_id", "event_type"} <= set(new.columns):
            ts = pl.col("timestamp").str.to_datetime(time_zone="UTC", time_unit="us")
            new = new.filter(ts > self.since)
            if "event_id" in new.columns:
                new = new.filter(pl.Series(self._fresh(new["event_id"].to_list()), dtype=pl.Boolean))
            rows = (new.group_by("variant", "user_id")
                    .agg((pl.col("event_type") == "click").sum().alias("clicks"),
                         (pl.col("event_type") == "impression").sum().alias("impressions")))
            for variant, user, clicks, shown in rows.iter_rows():
                total = self._totals.setdefault((variant, user), [0, 0])
                total[0] += clicks
                total[1] += shown
        out: dict[str, list[list[int]]] = {}
        for (variant, _), total in self._totals.items():
            if total[1] > 0:
                out.setdefault(variant, []).append(total)
        return {v: np.array(rows, dtype=np.int64).reshape(-1, 2) for v, rows in out.items()}
