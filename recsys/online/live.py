"""Live features: every schema feature of a (user, candidates) request computed as of an instant from the live
store's state (`recsys.store.state`) and the dataset's static tables, with the offline builder's own expressions.

The frame a request gets holds exactly the columns the point-in-time builder joins onto an example before it
encodes it (`recsys.data.state_spec`): the state read from the store, each per-row feature (ids with a
vocabulary, attributes) already encoded in the dataset's online tables, the user's signup time, ``position`` 0.
`recsys.data.features.encoded_value` then turns it into model inputs, the same call the builder makes, so the
live inputs of a request at ``t`` are the inputs an example at ``t`` gets offline (the parity test replays a log
to show it). A user or item outside the dataset's tables is what the offline build makes of one: unknown
attributes, no signup, and whatever state its events have built.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl

from recsys.data.features import (
    ITEM,
    META_SIGNUP,
    POSITION,
    TS,
    USER,
    F,
    encoded_value,
    per_row_table,
)
from recsys.data.state_spec import SIGNUP_COLUMN, USER_COUNTS
from recsys.errors import RecsysError
from recsys.export.signature import TensorSpec, serving_inputs
from recsys.online.features import OnlineFeatures
from recsys.schema import Feature, Kind, Scope
from recsys.store.state import HISTORY, StateReader, UserState, history_column, to_us

MODEL_PARTS = ("two_tower.user", "dlrm")


class LiveFeatures:
    """Model inputs from the live store as of an instant; the static parts from ``online``'s tables."""

    def __init__(self, online: OnlineFeatures, reader: StateReader):
        self.online, self.reader, self.schema, self.encoders = online, reader, online.schema, online.encoders
        if META_SIGNUP not in online.users.columns:
            raise RecsysError(f"dataset {online.dataset.id} has no signup times in its online users table: it was "
                              "built by an older pipeline; rebuild it (recsys data build --force)")
        self.features = {part: self.schema.used_by(part) for part in MODEL_PARTS}
        self._signup = online.users[META_SIGNUP].to_list()
        self._user_static = {f.name: online.users[f.name].to_numpy() for f in self.schema.by_scope(Scope.USER)
                             if per_row_table(f) == "users"}
        self._item_static = {f.name: online.items[f.name].to_numpy() for f in self.schema.by_scope(Scope.ITEM)
                             if per_row_table(f) == "items"}
        for f in self.reader.layout.spec.histories:
            table = self.schema[f.embedding_table]
            if table.kind != Kind.ITEM_ID and table.name not in self._item_static:
                raise RecsysError(f"history {f.name!r} indexes items by {table.name!r}, which the online items "
                                  f"table of dataset {online.dataset.id} does not hold")

    def user(self, user_id: int, at: datetime | None = None) -> UserState:
        """The user's live state as of ``at`` (None: the store's clock); one round trip."""
        return self.reader.user(user_id, None if at is None else to_us(at))

    def known(self, user: UserState) -> bool:
        """In the dataset's users table, or has events in the store (a new user after their first events)."""
        return user.user_id in self.online._user_index or user.has_events

    def query_frame(self, user: UserState) -> pl.DataFrame:
        """The query tower's encoded inputs (one row, ``f:<feature>`` columns)."""
        return self._encoded(user, [], {}, "two_tower.user")

    def ranking_frame(self, user: UserState, item_ids: list[int]) -> pl.DataFrame:
        """The ranker's encoded inputs, one row per candidate (``f:<feature>`` columns), position 0; reads the
        candidates' state as of the user's instant (one round trip)."""
        categories = [self.online.category.get(i) for i in item_ids]
        return self._encoded(user, item_ids, self.reader.items(user, item_ids, categories), "dlrm")

    def _encoded(self, user: UserState, item_ids: list[int], item_state: dict[str, list], part: str) -> pl.DataFrame:
        features, n = self.features[part], max(1, len(item_ids))
        rows = [self.online._item_index.get(i) for i in item_ids]
        index = self.online._user_index.get(user.user_id)
        at = pl.Series([user.at_us] * n, dtype=pl.Int64).cast(pl.Datetime("us", "UTC"))
        columns: dict[str, object] = {
            USER: [user.user_id] * n, ITEM: pl.Series(ITEM, item_ids or [None], dtype=pl.Int64), TS: at,
            POSITION: [0] * n,
            SIGNUP_COLUMN: pl.Series([None if index is None else self._signup[index]] * n,
                                     dtype=pl.Datetime("us", "UTC")),
        }
        for name, values in self._user_static.items():
            columns[F + name] = [None if index is None else values[index]] * n
        for name, values in self._item_static.items():
            columns[F + name] = [None if r is None else values[r] for r in rows] if item_ids else [None]
        for name, value in user.columns.items():
            if name.startswith(USER_COUNTS + "last:"):
                columns[name] = pl.Series([value] * n, dtype=pl.Int64).cast(pl.Datetime("us", "UTC"))
            elif not name.startswith(HISTORY):
                columns[name] = [value] * n
        columns.update(item_state)
        histories = [self._history(f, user.columns[history_column(tuple(sorted(f.params["event_types"])))], n)
                     for f in features if f.op == "user_history"]
        return pl.DataFrame(columns).with_columns(histories).select(
            [encoded_value(f, self.encoders).alias(F + f.name) for f in features])

    def _history(self, f: Feature, items: list[int], n: int) -> pl.Series:
        """A history feature's embedding indices (newest first, 0-padded), as the builder's state holds them."""
        items = items[: f.length]
        table = self.schema[f.embedding_table]
        if table.kind == Kind.ITEM_ID:
            indices = pl.select(self.encoders.index(table.name, pl.lit(pl.Series(items, dtype=pl.Int64)))).to_series()
        else:
            values, rows = self._item_static[table.name], [self.online._item_index.get(i) for i in items]
            indices = pl.Series([0 if r is None or values[r] is None else values[r] for r in rows], dtype=pl.Int64)
        padded = indices.to_list() + [0] * (f.length - len(items))
        return pl.Series(F + f.name, [padded] * n, dtype=pl.Array(pl.Int64, f.length))

    def inputs(self, frame: pl.DataFrame, specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
        """Model input arrays of ``specs`` from a `read` frame."""
        return serving_inputs(frame.rename({F + s.name: s.name for s in specs}), specs)
