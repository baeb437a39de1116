"""Online features for serving: the dataset's online tables (encoded by the same schema code as training),
looked up per request and assembled into model inputs.

* query tower inputs: the user's row of ``online/users.parquet``;
* DLRM inputs for (user, candidates): the user's row, each candidate's row of ``online/items.parquet``
  and the (user, candidate's category) row of ``online/user_category.parquet``; a pair the user never
  touched gets what the offline pipeline computes for it (the feature's encoded default); ``position`` is
  the encoded slot 0 for every candidate (position is a logging-policy feature: rank as if shown first);
* filters: items the user already purchased (validated events plus purchases fed back since), and items
  that are not available;
* cold start: items by recent popularity (``item_views_7d``), optionally within one category.

No Ray and no I/O after construction: the skew test and the replicas use the same object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recsys.data.dataset import Dataset
from recsys.data.features import META_AVAILABLE, META_CATEGORY, META_ITEM, META_USER
from recsys.errors import RecsysError
from recsys.export.signature import TensorSpec
from recsys.schema import Feature, FeatureSchema, Scope

POPULARITY = "item_views_7d"  # cold-start ordering (encoded log1p of 7-day views: same order as the counts)


def encoded_default(encoders, feature: Feature, raw: object) -> object:
    """The model input the encoders give ``raw`` (a missing value is ``None``)."""
    return pl.select(encoders.expr(feature, pl.lit(raw)).alias("v")).item()


@dataclass
class UserRow:
    user_id: int
    row: pl.DataFrame  # one row of the online users table


class OnlineFeatures:
    """Lookups over one dataset's online tables, for the query tower's and the ranker's inputs."""

    def __init__(self, dataset: Dataset, schema: FeatureSchema, popular_items: int = 500):
        if dataset.manifest.schema_hash != schema.hash:
            raise RecsysError(f"dataset {dataset.id} was built for schema {dataset.manifest.schema_hash}, "
                              f"serving uses {schema.hash}")
        self.dataset, self.schema = dataset, schema
        self.encoders = dataset.encoders(schema)
        self.users = dataset.online("users").sort(META_USER)
        self.items = dataset.online("items").sort(META_ITEM)
        self.cross = (dataset.online("user_category").sort(META_USER, maintain_order=True)
                      if "user_category" in dataset.manifest.online else None)
        self._cross_users = None if self.cross is None else self.cross[META_USER].to_numpy()
        self.as_of = dataset.manifest.online.get("as_of", "")
        self._user_index = dict(zip(self.users[META_USER].to_list(), range(self.users.height), strict=True))
        self._item_index = dict(zip(self.items[META_ITEM].to_list(), range(self.items.height), strict=True))
        self.available = self.items[META_AVAILABLE].fill_null(True).to_numpy().astype(bool)
        validated = dataset.manifest.sources.get("validated", {})
        self.category = self._categories(validated)  # item id -> category name
        self.purchased = self._purchases(validated)  # user id -> item ids
        self.popular = self._popular(popular_items)
        self._dlrm_names = {f.name for f in schema.used_by("dlrm")}

    # ---- loading -------------------------------------------------------------------------------
    def _categories(self, validated: dict) -> dict[int, str]:
        path = validated.get("items", {}).get("path")
        if not path or not Path(path).is_file():
            return {}
        items = pl.read_parquet(path, columns=["item_id", "category"])
        return dict(zip(items["item_id"].to_list(), items["category"].to_list(), strict=True))

    def _purchases(self, validated: dict) -> dict[int, set[int]]:
        path = validated.get("events", {}).get("path")
        if not path or not Path(path).is_file():
            return {}
        bought = (pl.scan_parquet(path).filter(pl.col("event_type") == "purchase")
                  .group_by("user_id").agg(pl.col("item_id").unique()).collect())
        return {u: set(i) for u, i in zip(bought["user_id"].to_list(), bought["item_id"].to_list(), strict=True)}

    def _popular(self, n: int) -> list[int]:
        column = POPULARITY if POPULARITY in self.items.columns else None
        frame = self.items.filter(pl.col(META_AVAILABLE).fill_null(True))
        if column is not None:
            frame = frame.sort([column, META_ITEM], descending=[True, False])
        return frame[META_ITEM].head(n).to_list()

    # ---- lookups -------------------------------------------------------------------------------
    def user(self, user_id: int) -> UserRow | None:
        """The user's online row, or None for a user the dataset has never seen (cold start)."""
        i = self._user_index.get(user_id)
        return None if i is None else UserRow(user_id, self.users.slice(i, 1))

    def add_purchase(self, user_id: int, item_id: int) -> None:
        self.purchased.setdefault(user_id, set()).add(item_id)

    def keep(self, user_id: int | None, item_ids: list[int], exclude: set[int]) -> list[int]:
        """``item_ids`` without purchased, excluded, unavailable or unknown items, order kept."""
        bought = self.purchased.get(user_id, set()) if user_id is not None else set()
        out = []
        for item in item_ids:
            i = self._item_index.get(item)
            if i is None or not self.available[i] or item in exclude or item in bought:
                continue
            out.append(item)
        return out

    def popular_items(self, category: str | None = None) -> list[int]:
        if category is None:
            return list(self.popular)
        return [i for i in self.popular if self.category.get(i) == category]

    # ---- model inputs -------------------------------------------------------------------------
    def query_inputs(self, user: UserRow, specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
        return _arrays(user.row, specs)

    def ranking_rows(self, user: UserRow, item_ids: list[int]) -> pl.DataFrame:
        """One encoded row per candidate: user features, item features, cross features, position 0."""
        n = len(item_ids)
        rows = self.items[[self._item_index[i] for i in item_ids]]
        user_cols = user.row.drop(META_USER)
        frame = pl.concat([rows, pl.concat([user_cols] * n) if n else user_cols.clear()], how="horizontal")
        cross_f = [f for f in self.schema.by_scope(Scope.CROSS) if f.name in self._dlrm_names]
        if cross_f:
            categories = pl.Series(META_CATEGORY, [self.category.get(i) for i in item_ids], dtype=pl.String)
            frame = frame.with_columns(categories)
            if self.cross is not None:  # the user's rows: a slice of the table sorted by user
                lo, hi = np.searchsorted(self._cross_users, [user.user_id, user.user_id + 1])
                mine = self.cross.slice(int(lo), int(hi - lo)).drop(META_USER)
            else:
                mine = pl.DataFrame(schema={META_CATEGORY: pl.String})
            frame = frame.join(mine.select(META_CATEGORY, *[f.name for f in cross_f if f.name in mine.columns]),
                               on=META_CATEGORY, how="left", nulls_equal=False, maintain_order="left")
            for f in cross_f:
                # a category the user never touched: the share the offline pipeline computes (0 of their events)
                fill = encoded_default(self.encoders, f, 0.0)
                column = pl.col(f.name) if f.name in frame.columns else pl.lit(None)
                frame = frame.with_columns(column.fill_null(fill).cast(pl.Float32).alias(f.name))
        for f in self.schema.by_scope(Scope.CONTEXT):
            if f.name in self._dlrm_names:
                frame = frame.with_columns(pl.lit(encoded_default(self.encoders, f, 0), dtype=pl.Int64).alias(f.name))
        return frame

    def ranking_inputs(self, user: UserRow, item_ids: list[int],
                       specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
        return _arrays(self.ranking_rows(user, item_ids), specs)


def _arrays(rows: pl.DataFrame, specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    """`recsys.export.serving.serving_inputs` without importing torch into the replicas (the skew test
    checks that both give the same arrays)."""
    out = {}
    for s in specs:
        values = rows[s.name].to_numpy().astype(np.int64 if s.dtype == "int64" else np.float32)
        out[s.name] = values.reshape(len(rows), *s.shape)
    return out



def model_inputs(schema: FeatureSchema, part: str) -> tuple[TensorSpec, ...]:
    """A model part's serving inputs as the exporter derives them (`recsys.export.serving.input_specs`):
    sparse features (int64, ``(length,)``) then dense ones (float32, ``(1,)``), in schema order."""
    features = schema.used_by(part)
    return (*(TensorSpec(f.name, "int64", (f.length,)) for f in features if f.is_sparse),
            *(TensorSpec(f.name, "float32", (1,)) for f in features if not f.is_sparse))
