"""Data drift: live model inputs against the training dataset's statistics profile.

The reference is the ``profile`` a dataset's manifest holds per task (``recsys/data/profile.py``); the live
side is a frame of *encoded* features, e.g. the logged requests. Per feature:

* **categorical** (ids, categoricals, buckets, position): PSI over the profile's ``top`` values plus one
  rest bucket; a chi-square goodness-of-fit test of the live counts against the reference shares; the live
  share of values the reference never saw (``unseen_share``) when the profile listed every distinct value,
  else the live share outside ``top`` (``other_share``); the change of the missing share (index 0).
* **dense**: PSI over the profile's histogram bins (its training deciles); a one-sample Kolmogorov-Smirnov
  statistic of the live values against the reference CDF as far as the profile's quantiles pin it down
  (see `ks_statistic`); the change of the null share; the mean shift in reference standard deviations.
* **history**: the profile keeps only ``mean_length`` and ``empty_share``, so PSI is over two bins (empty,
  non-empty) with a chi-square test on them, and the mean shift is the change of the mean length in items.

The live frame is aggregated with Polars, all features in one ``collect_all``: a ``group_by`` per categorical,
one pass of sums per dense feature (rows below each histogram edge and below / at each quantile: no sort)
and per history. What is left is a few numbers per bucket, handled with numpy. No loop over rows.

PSI is ``sum((a - e) * ln(a / e))`` over buckets with reference shares ``e`` and live shares ``a``; a share
of 0 on either side is replaced by ``EPS`` (1e-4) so an empty bucket costs a finite amount: a bucket the
reference never filled that holds 1% of live rows adds (0.01 - 0.0001) * ln(100) = 0.046.

``drifted`` is decided by effect sizes (PSI, unseen share, missing share change; see `DriftThresholds`), not
by the p-values: at monitoring volumes every test rejects on differences nobody cares about.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from recsys.errors import RecsysError

EPS = 1e-4  # share used in PSI for an empty bucket (on either side)
MIN_EXPECTED = 5.0  # chi-square: buckets expecting fewer live rows are pooled into one


class DriftError(RecsysError, ValueError):
    """The live frame or the profile cannot be compared; the message names the feature."""


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature counts as drifted (any one suffices)."""

    psi: float = 0.2  # PSI above this (0.1-0.2 is the usual "moderate", above 0.2 "significant")
    unseen_share: float = 0.05  # live share of category values the training data never had
    missing_share_change: float = 0.05  # absolute change of the missing / null / empty-history share


@dataclass(frozen=True)
class FeatureDrift:
    """Drift of one feature.

    Attributes:
        name, kind: the feature and its profile kind (categorical, dense, history, label).
        n: live rows (nulls included).
        psi: population stability index against the reference buckets; None when it cannot be computed.
        test: "chi2" (categorical, history) or "ks" (dense); None when no test was run.
        statistic, p_value: the test's statistic and p-value (p-value None without SciPy).
        unseen_share: categoricals whose profile lists every distinct value: live share of other values.
        other_share: categoricals whose profile ``top`` is truncated: live share outside ``top``
            (``reference_other_share`` is the training share, ``1 - top_share``).
        missing_share, missing_share_change: live share of missing values (categorical index 0, dense null,
            empty history) and its change against the reference.
        mean_shift: dense: (live mean - reference mean) / reference std; history: change of the mean length.
        drifted, reasons: whether a threshold was crossed, and which (human-readable).
        note: why something was not computed, or how to read it.
    """

    name: str
    kind: str
    n: int
    psi: float | None = None
    test: str | None = None
    statistic: float | None = None
    p_value: float | None = None
    unseen_share: float | None = None
    other_share: float | None = None
    reference_other_share: float | None = None
    missing_share: float | None = None
    missing_share_change: float | None = None
    mean_shift: float | None = None
    drifted: bool = False
    reasons: tuple[str, ...] = ()
    note: str = ""


def psi(expected: Iterable[float], actual: Iterable[float], eps: float = EPS) -> float:
    """Population stability index of bucket shares: ``sum((a - e) * ln(a / e))``, shares clipped at ``eps``."""
    e = np.maximum(np.asarray(list(expected), dtype=np.float64), eps)
    a = np.maximum(np.asarray(list(actual), dtype=np.float64), eps)
    if e.shape != a.shape:
        raise ValueError(f"psi: {len(e)} expected shares but {len(a)} actual shares")
    return float(np.sum((a - e) * np.log(a / e)))


def _chi2_sf(statistic: float, dof: int) -> float | None:
    try:
        from scipy.stats import chi2  # lazy: SciPy is only needed for the p-values
    except ImportError:
        return None
    return float(chi2.sf(statistic, dof))


def _kolmogorov_sf(statistic: float, n: int) -> float | None:
    try:
        from scipy.stats import kstwo
    except ImportError:
        return None
    return float(kstwo.sf(statistic, n))


def chi_square(observed: np.ndarray, expected_share: np.ndarray) -> tuple[float | None, float | None]:
    """Goodness of fit of bucket counts to reference shares: (statistic, p-value).

    Buckets the reference never filled are left out (and the shares renormalised over the rest): what falls
    there is reported as unseen. Buckets expecting fewer than 5 rows are pooled into one.
    """
    keep = expected_share > 0
    obs = observed[keep].astype(np.float64)
    n = obs.sum()
    if n == 0 or len(obs) < 2:
        return None, None
    expected = expected_share[keep] / expected_share[keep].sum() * n
    small = expected < MIN_EXPECTED
    if small.any():
        obs = np.append(obs[~small], obs[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
    if len(obs) < 2:
        return None, None
    statistic = float(((obs - expected) ** 2 / expected).sum())
    return statistic, _chi2_sf(statistic, len(obs) - 1)


def reference_knots(quantiles: dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Knots of the reference CDF from the profile's quantiles ``{"p0": v, ..., "p100": v}``.

    Returns (distinct quantile values, F at each knot >= the highest probability there, F just below each
    knot <= the lowest probability there). Repeated values (a point mass, e.g. many zeros) share one knot.
    """
    probs = np.array([int(k[1:]) / 100 for k in quantiles], dtype=np.float64)
    values = np.array(list(quantiles.values()), dtype=np.float64)
    order = np.lexsort((probs, values))
    probs, values = probs[order], values[order]
    knots, first = np.unique(values, return_index=True)
    last = np.append(first[1:], len(values)) - 1
    at, below = probs[last], probs[first]
    at[-1], below[0] = 1.0, 0.0  # nothing lies below p0 or above p100
    return knots, at, below


def ks_statistic(quantiles: dict[str, float], cdf_below: np.ndarray, cdf_at: np.ndarray) -> float:
    """KS distance of a live sample from the band of CDFs the profile's quantiles allow.

    Args:
        quantiles: the profile's ``{"p0": v, ..., "p100": v}``.
        cdf_below, cdf_at: live share of values < and <= each knot of `reference_knots` (its first output).

    The reference CDF is only known at its quantiles: F(q_p) >= p and F(q_p-) <= p, so between two knots it
    lies between the lower knot's probability and the upper's. The statistic is the sup over x of the
    distance from F_live(x) to that band: the smallest KS distance the live sample can have to any CDF through
    the quantiles, a lower bound of the KS distance to the training data's CDF, and 0 on the training data.
    As F_live is monotone and the band is constant between knots, the sup is reached at a knot or just below
    one: D = max(0, max_k(at_k - F_live(q_k)), max_k(F_live(q_k-) - below_k)).
    """
    _, at, below = reference_knots(quantiles)
    return float(max(0.0, (at - cdf_at).max(), (cdf_below - below).max()))


def _flag(result: dict[str, Any], thresholds: DriftThresholds) -> tuple[bool, tuple[str, ...]]:
    reasons = []
    if result.get("psi") is not None and result["psi"] > thresholds.psi:
        reasons.append(f"psi {result['psi']:.3f} > {thresholds.psi}")
    if result.get("unseen_share") is not None and result["unseen_share"] > thresholds.unseen_share:
        reasons.append(f"unseen share {result['unseen_share']:.3f} > {thresholds.unseen_share}")
    change = result.get("missing_share_change")
    if change is not None and abs(change) > thresholds.missing_share_change:
        reasons.append(f"missing share changed by {change:+.3f} (limit {thresholds.missing_share_change})")
    return bool(reasons), tuple(reasons)


# ---- per kind: the Polars aggregation, then what it means ----

def _categorical_query(lf: pl.LazyFrame, name: str) -> pl.LazyFrame:
    # nulls count as missing (index 0), as the encoder writes them
    return lf.select(pl.col(name).cast(pl.Int64).fill_null(0)).group_by(name).agg(pl.len().alias("n"))


def _categorical(name: str, ref: dict[str, Any], counts: pl.DataFrame) -> dict[str, Any]:
    n = int(counts["n"].sum())
    top = ref.get("top", {})
    reference = pl.DataFrame({name: [int(k) for k in top], "expected": list(top.values())},
                             schema={name: pl.Int64, "expected": pl.Float64})
    joined = reference.join(counts, on=name, how="left").with_columns(pl.col("n").fill_null(0))
    expected = joined["expected"].to_numpy()
    observed = joined["n"].to_numpy().astype(np.float64)
    outside = n - observed.sum()
    complete = len(top) == ref.get("distinct", -1)
    rest_expected = 0.0 if complete else max(0.0, 1.0 - float(ref.get("top_share", expected.sum())))
    expected = np.append(expected, rest_expected)
    observed = np.append(observed, outside)
    statistic, p_value = chi_square(observed, expected)
    missing = float(counts.filter(pl.col(name) == 0)["n"].sum() / n)
    out = {"psi": psi(expected, observed / n), "test": "chi2", "statistic": statistic, "p_value": p_value,
           "missing_share": missing, "missing_share_change": missing - float(ref.get("missing_share", 0.0))}
    if complete:
        out["unseen_share"] = float(outside / n)
    else:
        out.update(other_share=float(outside / n), reference_other_share=rest_expected,
                   note=f"profile lists the top {len(top)} of {ref.get('distinct')} values; the rest is one "
                        "bucket ('other'), so unseen values cannot be told from rare ones")
    return out


def _dense_query(lf: pl.LazyFrame, name: str, ref: dict[str, Any]) -> pl.LazyFrame:
    """One pass of sums: rows below each histogram edge and below / at each quantile knot (no sort)."""
    x = pl.col(name).cast(pl.Float64).fill_nan(None)
    exprs = [pl.len().alias("n"), x.null_count().alias("nulls"), x.mean().alias("mean")]
    if "histogram" in ref:
        exprs += [(x < e).sum().alias(f"bin_lt{i}") for i, e in enumerate(ref["histogram"]["inner_edges"])]
        knots = reference_knots(ref["quantiles"])[0]
        exprs += [(x < q).sum().alias(f"q_lt{i}") for i, q in enumerate(knots)]
        exprs += [(x <= q).sum().alias(f"q_le{i}") for i, q in enumerate(knots)]
    return lf.select(exprs)


def _dense(name: str, ref: dict[str, Any], agg: pl.DataFrame) -> dict[str, Any]:
    row = agg.row(0, named=True)
    n, valid = row["n"], row["n"] - row["nulls"]
    null_share = row["nulls"] / n
    out: dict[str, Any] = {"missing_share": null_share,
                           "missing_share_change": null_share - float(ref.get("null_share", 0.0))}
    if "histogram" not in ref:
        return {**out, "note": "the reference has no non-null values: nothing to compare"}
    if valid == 0:
        return {**out, "note": "no non-null live values"}
    # the same bins as the profile: bin i holds inner_edges[i-1] <= x < inner_edges[i]
    inner = ref["histogram"]["inner_edges"]
    below_edge = np.array([0] + [row[f"bin_lt{i}"] for i in range(len(inner))] + [valid], dtype=np.float64)
    ref_counts = np.asarray(ref["histogram"]["counts"], dtype=np.float64)
    out["psi"] = psi(ref_counts / ref_counts.sum(), np.diff(below_edge) / valid)
    k = len(reference_knots(ref["quantiles"])[0])
    cdf_below = np.array([row[f"q_lt{i}"] for i in range(k)], dtype=np.float64) / valid
    cdf_at = np.array([row[f"q_le{i}"] for i in range(k)], dtype=np.float64) / valid
    statistic = ks_statistic(ref["quantiles"], cdf_below, cdf_at)
    out.update(test="ks", statistic=statistic, p_value=_kolmogorov_sf(statistic, valid))
    if ref.get("std"):
        out["mean_shift"] = (row["mean"] - ref["mean"]) / ref["std"]
    return out


def _history_query(lf: pl.LazyFrame, name: str, dtype: pl.DataType) -> pl.LazyFrame:
    if isinstance(dtype, pl.Array):
        filled = pl.col(name).arr.len() - pl.col(name).arr.count_matches(0)
    elif isinstance(dtype, pl.List):
        filled = pl.col(name).list.len() - pl.col(name).list.count_matches(0)
    else:
        raise DriftError(f"feature {name!r}: a history must be a list or array column, got {dtype}")
    filled = filled.cast(pl.Int64).fill_null(0)
    return lf.select(filled.alias("filled")).select(n=pl.len(), empty=(pl.col("filled") == 0).sum(),
                                                    total=pl.col("filled").sum())


def _history(name: str, ref: dict[str, Any], agg: pl.DataFrame) -> dict[str, Any]:
    n, empty, total = (int(agg[c][0] or 0) for c in ("n", "empty", "total"))
    ref_empty = float(ref["empty_share"])
    live_empty = empty / n
    expected = np.array([ref_empty, 1.0 - ref_empty])
    statistic, p_value = chi_square(np.array([empty, n - empty], dtype=np.float64), expected)
    return {"psi": psi(expected, [live_empty, 1.0 - live_empty]), "test": "chi2", "statistic": statistic,
            "p_value": p_value, "missing_share": live_empty, "missing_share_change": live_empty - ref_empty,
            "mean_shift": total / n - float(ref["mean_length"]),
            "note": "the profile keeps only mean_length and empty_share: PSI and chi2 are over (empty, "
                    "non-empty), mean_shift is the change of the mean length in items"}


def feature_drift(profile: dict[str, dict[str, Any]], live: pl.DataFrame | pl.LazyFrame,
                  features: list[str] | None = None,
                  thresholds: DriftThresholds | None = None) -> list[FeatureDrift]:
    """Compare live encoded features with one task's reference profile (``manifest["profile"][task]``).

    Args:
        profile: feature name -> profile dict, as `recsys.data.profile.profile_features` writes it.
        live: encoded features, one row per example (e.g. logged requests); extra columns are ignored.
        features: which to check; None = every profiled feature that ``live`` has, labels excepted.
        thresholds: when a feature counts as drifted.

    Returns:
        One `FeatureDrift` per feature, in profile order (or the order of ``features``).

    Dense test: D = `ks_statistic` (the KS distance from the live values to the nearest CDF through the
    profile's 11 quantiles, a lower bound of the distance to the training CDF). Its p-value is the one-sample
    Kolmogorov distribution's for n live values; since D can only understate the distance to the training
    CDF, the p-value is conservative (too large, never too small).
    Raises `DriftError` when a named feature is not profiled or not in ``live``.
    """
    thresholds = thresholds or DriftThresholds()
    lf = live.lazy() if isinstance(live, pl.DataFrame) else live
    schema = lf.collect_schema()
    if features is None:
        names = [f for f, ref in profile.items() if ref.get("kind") != "label" and f in schema]
    else:
        names = list(features)
        unknown = [f for f in names if f not in profile]
        if unknown:
            raise DriftError(f"feature(s) {unknown} are not in the reference profile (it has {sorted(profile)})")
        absent = [f for f in names if f not in schema]
        if absent:
            raise DriftError(f"feature(s) {absent} are not columns of the live frame (it has {schema.names()})")

    queries = []
    for name in names:
        kind = profile[name]["kind"]
        if kind == "categorical":
            queries.append(_categorical_query(lf, name))
        elif kind in ("dense", "label"):
            queries.append(_dense_query(lf, name, profile[name]))
        elif kind == "history":
            queries.append(_history_query(lf, name, schema[name]))
        else:
            raise DriftError(f"feature {name!r}: unknown profile kind {kind!r}")
    frames = pl.collect_all(queries)

    results = []
    for name, frame in zip(names, frames, strict=True):
        ref = profile[name]
        kind = ref["kind"]
        n = int(frame["n"].sum()) if kind == "categorical" else int(frame["n"][0])
        if n == 0:
            results.append(FeatureDrift(name=name, kind=kind, n=0, note="no live rows"))
            continue
        if kind == "categorical":
            values = _categorical(name, ref, frame)
        elif kind == "history":
            values = _history(name, ref, frame)
        else:
            values = _dense(name, ref, frame)
        drifted, reasons = _flag(values, thresholds)
        results.append(FeatureDrift(name=name, kind=kind, n=n, drifted=drifted, reasons=reasons, **values))
    return results


def drift_summary(results: list[FeatureDrift]) -> dict[str, Any]:
    """Metrics for logging and alerting: keys ``drift.*``, per-feature PSI as ``drift.psi.<feature>``.

    ``drift.max_psi`` is 0.0 when no PSI could be computed; ``drift.drifted_features`` is a list (not a metric).
    """
    with_psi = [r for r in results if r.psi is not None and math.isfinite(r.psi)]
    worst = max(with_psi, key=lambda r: r.psi, default=None)
    unseen = [r.unseen_share for r in results if r.unseen_share is not None]
    out: dict[str, Any] = {
        "drift.max_psi": worst.psi if worst else 0.0,
        "drift.max_psi_feature": worst.name if worst else None,
        "drift.max_unseen_share": max(unseen, default=0.0),
        "drift.n_features": len(results),
        "drift.n_drifted": sum(r.drifted for r in results),
        "drift.drifted_features": [r.name for r in results if r.drifted],
    }
    out.update({f"drift.psi.{r.name}": r.psi for r in with_psi})
    return out
