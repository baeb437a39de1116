"""Online features as serving reads them: the dataset's online tables (encoded by the same schema code as training),
looked up per request and assembled into model inputs.

* query tower inputs: the user's row of ``online/users.parquet``;
* DLRM inputs for (user, candidates): the user's row, each candidate's row of ``online/items.parquet``
  and the (user, candidate's category) row of ``online/user_category.parquet``; a pair the user never
  touched gets what the offline pipeline computes for it (the feature's encoded default); ``position`` is
  the encoded slot 0 for every candidate (position is a logging-policy feature: rank as if shown first);
* filters: items the user already purchased (the dataset's ``online/purchases`` plus purchases fed back since),
  and items that are not available;
* cold start: items by recent popularity (``item_views_7d``), optionally within one category.

No Ray and no I/O after construction: the skew test and the replicas use the same object
(`serving.datasets.FeaturesByDataset` holds one per dataset the rollout names), and
`recsys.evaluation.list_quality` builds serving's lists offline with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl

from recsys.data.dataset import Dataset
from recsys.data.features import META_AVAILABLE, META_CATEGORY, META_ITEM, META_USER
from recsys.errors import RecsysError
from recsys.export.signature import TensorSpec, serving_inputs, tensor_specs
from recsys.schema import Feature, FeatureSchema, Scope

log = logging.getLogger(__name__)
POPULARITY = "item_views_7d"  # cold-start ordering (encoded log1p of 7-day views: same order as the counts)


def encoded_default(encoders, feature: Feature, raw: object) -> object:
    """The model input the encoders give ``raw`` (a missing value is ``None``)."""
    return pl.select(encoders.expr(feature, pl.lit(raw)).alias("v")).item()


@dataclass
class UserRow:
    user_id: int
    index: int  # the user's row in the online users table


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
        missing = [name for name in ("users", "items", "purchases") if name not in dataset.manifest.online]
        if missing or META_CATEGORY not in self.items.columns:
            raise RecsysError(f"dataset {dataset.id} ({dataset.path}) has no online {missing or ['item categories']}: "
                              f"it was built by an older pipeline; rebuild it (recsys data build --force)")
        self.category = dict(zip(self.items[META_ITEM].to_list(), self.items[META_CATEGORY].to_list(), strict=True))
        self.purchased = self._purchases(dataset.online("purchases"))  # user id -> item ids
        self.popular = self._popular(popular_items)
        self._gather_tables()

    # ---- loading -------------------------------------------------------------------------------
    @staticmethod
    def _purchases(bought: pl.DataFrame) -> dict[int, set[int]]:
        grouped = bought.group_by(META_USER).agg(pl.col(META_ITEM))
        return {u: set(i) for u, i in zip(grouped[META_USER].to_list(), grouped[META_ITEM].to_list(), strict=True)}

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
        return None if i is None else UserRow(user_id, i)

    def known_item(self, item_id: int) -> bool:
        return item_id in self._item_index

    def item_row(self, item_id: int, missing: int | None = None) -> int | None:
        """The item's row in the online items table (``missing`` for an item outside it)."""
        return self._item_index.get(item_id, missing)

    def add_purchase(self, user_id: int, item_id: int) -> None:
        self.purchased.setdefault(user_id, set()).add(item_id)

    def keep(self, user_id: int | None, item_ids: list[int], exclude: set[int],
             bought: set[int] | None = None) -> list[int]:
        """``item_ids`` without purchased (``bought``, else those this dataset and the feedback know of), excluded,
        unavailable or unknown items, order kept."""
        if bought is None:
            bought = self.purchased.get(user_id, set()) if user_id is not None else set()
        out = []
        for item in item_ids:
            i = self._item_index.get(item)
            if i is None or not self.available[i] or item in exclude or item in bought:
                continue
            out.append(item)
        return out

    def to_rank(self, user_id: int, candidates: list[int], exclude: set[int], k: int,
                bought: set[int] | None = None) -> list[int]:
        """The candidates a known user's list is ranked from: ``candidates`` kept (`keep`), topped up with popular
        items when fewer than ``k`` remain (most of them bought or excluded)."""
        kept = self.keep(user_id, candidates, exclude, bought)
        if len(kept) < k:
            extra = self.keep(user_id, self.popular_items(), exclude | set(kept), bought)
            kept += extra[: k - len(kept)]
        return kept

    def popular_items(self, category: str | None = None) -> list[int]:
        if category is None:
            return list(self.popular)
        return [i for i in self.popular if self.category.get(i) == category]

    # ---- model inputs -------------------------------------------------------------------------
    def query_inputs(self, user: UserRow, specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
        return {s.name: self._by_user[s.name][user.index : user.index + 1] for s in specs}

    def ranking_inputs(self, user: UserRow, item_ids: list[int],
                       specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
        """One encoded row per candidate: user features, item features, cross features, position 0 (numpy
        gathers: no data frame per request)."""
        rows = np.fromiter((self._item_index[i] for i in item_ids), dtype=np.int64, count=len(item_ids))
        out = {}
        for s in specs:
            if s.name in self._by_item:
                out[s.name] = self._by_item[s.name][rows]
            elif s.name in self._by_user:
                one = self._by_user[s.name][user.index]
                out[s.name] = np.broadcast_to(one, (len(rows), *one.shape)).copy()
            elif s.name in self._cross:
                out[s.name] = self._cross_values(s.name, user.user_id, rows).reshape(len(rows), *s.shape)
            elif s.name in self._constant:
                out[s.name] = np.full((len(rows), *s.shape), self._constant[s.name], dtype=s.numpy_dtype)
            else:
                raise RecsysError(f"no online source for model input {s.name!r}")
        return out

    def _cross_values(self, name: str, user_id: int, rows: np.ndarray) -> np.ndarray:
        """The user's value of a (user, category) feature for each candidate's category; a category the user
        never touched gets what the offline pipeline computes for it (its share of 0 events)."""
        values, default = self._cross[name]
        by_category = np.full(len(self._category_codes) + 1, default, dtype=np.float32)  # last: no category
        if self.cross is not None:  # the user's rows: a slice of the table sorted by user
            lo, hi = np.searchsorted(self._cross_users, [user_id, user_id + 1])
            by_category[self._cross_category[lo:hi]] = values[lo:hi]
        return by_category[self._item_category[rows]]

    def _gather_tables(self) -> None:
        """Per-feature arrays in table-row order, the cross table's category codes, and constant inputs."""
        self._by_user = serving_inputs(self.users, self._specs(Scope.USER))
        self._by_item = serving_inputs(self.items, self._specs(Scope.ITEM))
        names = sorted({c for c in self.category.values() if c is not None})
        self._category_codes = {c: n for n, c in enumerate(names)}
        missing = len(names)  # an item without a category never matches a user's category row
        self._item_category = np.array([self._category_codes.get(self.category.get(i), missing)
                                        for i in self.items[META_ITEM].to_list()], dtype=np.int64)
        self._cross: dict[str, tuple[np.ndarray, float]] = {}
        if self.cross is not None:
            self._cross_category = np.array([self._category_codes.get(c, missing)
                                             for c in self.cross[META_CATEGORY].to_list()], dtype=np.int64)
        for f in self.schema.by_scope(Scope.CROSS):
            column = self.cross[f.name] if self.cross is not None and f.name in self.cross.columns else None
            values = (column.fill_null(np.nan).cast(pl.Float32).to_numpy() if column is not None
                      else np.zeros(0, np.float32))
            default = encoded_default(self.encoders, f, 0.0)
            self._cross[f.name] = (np.where(np.isnan(values), default, values).astype(np.float32), default)
        self._constant = serving_context(self.schema, self.encoders)

    def _specs(self, scope: Scope) -> tuple[TensorSpec, ...]:
        return tensor_specs(self.schema.by_scope(scope))


def serving_context(schema: FeatureSchema, encoders) -> dict[str, object]:
    """The encoded value serving gives each context input (the position) for every candidate: its raw 0."""
    return {f.name: encoded_default(encoders, f, 0) for f in schema.by_scope(Scope.CONTEXT)}


def model_inputs(schema: FeatureSchema, part: str) -> tuple[TensorSpec, ...]:
    """A model part's serving inputs."""
    return tensor_specs(schema.used_by(part))
