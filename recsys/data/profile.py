"""Statistics profile of encoded features: the reference for drift detection and data checks.

Dense features get moments, quantiles and a 10-bin histogram over their training quantiles (the bins
PSI is computed on later); categorical features get their most frequent indices and the missing
share; histories their fill. Id features hashed into buckets get how many ids share one (`hash_collisions`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from recsys.data.features import FeatureBuilder
from recsys.schema import Feature, Kind

QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
TOP_VALUES = 50
BINS = 10


def _dense(s: pl.Series) -> dict[str, Any]:
    values = s.drop_nulls().cast(pl.Float64).to_numpy()
    out: dict[str, Any] = {"count": int(s.len()), "null_share": float(s.null_count() / max(1, s.len()))}
    if not len(values):
        return out
    qs = np.quantile(values, QUANTILES)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, BINS + 1)))
    inner = edges[1:-1]
    counts = np.bincount(np.searchsorted(inner, values, side="right"), minlength=len(inner) + 1)
    out.update(mean=float(values.mean()), std=float(values.std()), min=float(qs[0]), max=float(qs[-1]),
               quantiles={f"p{int(q * 100)}": float(v) for q, v in zip(QUANTILES, qs, strict=True)},
               histogram={"inner_edges": inner.tolist(), "counts": counts.tolist()})
    return out


def _categorical(s: pl.Series) -> dict[str, Any]:
    n = max(1, s.len())
    counts = s.value_counts(name="n").sort(["n", s.name], descending=[True, False])
    top = counts.head(TOP_VALUES)
    return {
        "count": int(s.len()),
        "distinct": int(counts.height),
        "missing_share": float((s == 0).sum() / n),
        "top": {str(v): c / n for v, c in top.iter_rows()},
        "top_share": float(top["n"].sum() / n),
    }


def _history(s: pl.Series) -> dict[str, Any]:
    filled = (s.to_numpy() != 0).sum(axis=1)  # (N, length) -> items per history
    return {"count": int(s.len()), "mean_length": float(filled.mean()) if len(filled) else 0.0,
            "empty_share": float((filled == 0).mean()) if len(filled) else 0.0}


def profile_features(frame: pl.LazyFrame, features: list[Feature]) -> dict[str, dict[str, Any]]:
    """Profile each feature column of ``frame`` (encoded model inputs), reading one column at a time."""
    out = {}
    for f in features:
        s = frame.select(f.name).collect().to_series()
        if f.kind == Kind.HISTORY:
            out[f.name] = {"kind": "history", **_history(s)}
        elif f.is_sparse:
            out[f.name] = {"kind": "categorical", **_categorical(s)}
        else:
            out[f.name] = {"kind": "label" if f.kind == Kind.LABEL else "dense", **_dense(s)}
    return out


def hash_collisions(builder: FeatureBuilder) -> dict[str, dict[str, Any]]:
    """Per id feature hashed into buckets: how many ids, how many buckets they fill, and the share of ids that
    share their bucket with another (such ids share one embedding row)."""
    out = {}
    for f in builder.schema.features:
        if f.kind not in (Kind.USER_ID, Kind.ITEM_ID) or f.encoding != "hash":
            continue
        table = builder.users if f.kind == Kind.USER_ID else builder.items
        rows = table.select(builder.encoders.index(f.embedding_table, pl.col(f.params["column"])).alias("b"))
        shared = rows.filter(pl.col("b").is_duplicated()).height
        out[f.name] = {"ids": rows.height, "buckets": builder.encoders.fitted[f.embedding_table].cardinality - 1,
                       "buckets_used": rows["b"].n_unique(), "share_colliding": shared / max(rows.height, 1)}
    return out
