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
from recsys.export.signature import TensorSpec
from recsys.online.features import OnlineFeatures
from recsys.schema import Feature, Kind, Scope
from recsys.store.state import HISTORY, StateReader, UserState, history_column, to_us

MODEL_PARTS = ("two_tower.user", "dlrm")


class LiveFeatures:
    """Model inputs from the live store as of an instant; the static parts from ``online``'s tables.

    A request's user features are encoded once, on one row (the query tower's inputs, and broadcast to every
    candidate for the ranker's); the candidates' item, cross and context features on one row per candidate."""

    def __init__(self, online: OnlineFeatures, reader: StateReader):
        self.online, self.reader, self.schema, self.encoders = online, reader, online.schema, online.encoders
        if META_SIGNUP not in online.users.columns:
            raise RecsysError(f"dataset {online.dataset.id} has no signup times in its online users table: it was "
                              "built by an older pipeline; rebuild it (recsys data build --force)")
        self.features = {part: self.schema.used_by(part) for part in MODEL_PARTS}
        used = {f.name for part in MODEL_PARTS for f in self.features[part]}
        self._user_f = [f for f in self.schema.by_scope(Scope.USER) if f.name in used]
        self._candidate_f = [f for f in self.features["dlrm"] if f.scope != Scope.USER]
        self._user_exprs = [encoded_value(f, self.encoders).alias(F + f.name) for f in self._user_f]
        self._candidate_exprs = [encoded_value(f, self.encoders).alias(F + f.name) for f in self._candidate_f]
        self._signup = online.users[META_SIGNUP].to_list()
        self._indices: dict[str, dict[int, int]] = {}  # embedding table -> item -> row (`_embedding_rows`)
        self._user_static = {f.name: online.users[f.name].to_list() for f in self._user_f
                             if per_row_table(f) == "users"}
        item_static = [f.name for f in self.schema.by_scope(Scope.ITEM) if per_row_table(f) == "items"]
        self._item_static = online.items.select([pl.col(name).alias(F + name) for name in item_static])
        self._item_arrays = {name: self._item_static[name].to_numpy() for name in self._item_static.columns}
        for f in self.reader.layout.spec.histories:
            table = self.schema[f.embedding_table]
            if table.kind != Kind.ITEM_ID and table.name not in item_static:
                raise RecsysError(f"history {f.name!r} indexes items by {table.name!r}, which the online items "
                                  f"table of dataset {online.dataset.id} does not hold")

    def user(self, user_id: int, at: datetime | None = None) -> UserState:
        """The user's live state as of ``at`` (None: the store's clock); one round trip."""
        return self.reader.user(user_id, None if at is None else to_us(at))

    def known(self, user: UserState) -> bool:
        """In the dataset's users table, or has events in the store (a new user after their first events)."""
        return self.online.user(user.user_id) is not None or user.has_events

    def user_frame(self, user: UserState) -> pl.DataFrame:
        """Every user feature's encoded input (one row, ``f:<feature>`` columns); encoded once per request and
        dataset (the query tower's inputs and the ranker's share it)."""
        key = self.online.dataset.id
        if key in user.encoded:
            return user.encoded[key]
        row = self.online.user(user.user_id)
        index = None if row is None else row.index
        columns: dict[str, object] = {
            USER: [user.user_id], TS: pl.Series([user.at_us], dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            SIGNUP_COLUMN: pl.Series([None if index is None else self._signup[index]], dtype=pl.Datetime("us", "UTC")),
        }
        for name, values in self._user_static.items():
            columns[F + name] = [None if index is None else values[index]]
        for name, value in user.columns.items():
            if name.startswith(USER_COUNTS + "last:"):
                columns[name] = pl.Series([value], dtype=pl.Int64).cast(pl.Datetime("us", "UTC"))
            elif not name.startswith(HISTORY):
                columns[name] = [value]
        for f in self._user_f:
            if f.op == "user_history":
                columns[F + f.name] = self._history(f, user.columns[history_column(tuple(sorted(
                    f.params["event_types"])))])
        frame = pl.DataFrame(columns).select(self._user_exprs)
        user.encoded[key] = frame
        return frame

    def query_frame(self, user: UserState) -> pl.DataFrame:
        """The query tower's encoded inputs (one row, ``f:<feature>`` columns)."""
        return self.user_frame(user).select([F + f.name for f in self.features["two_tower.user"]])

    def ranking_frame(self, user: UserState, item_ids: list[int]) -> pl.DataFrame:
        """The ranker's encoded inputs, one row per candidate (``f:<feature>`` columns), position 0; reads the
        candidates' state as of the user's instant (one round trip)."""
        users = self.user_frame(user)[[0] * len(item_ids)]
        names = [F + f.name for f in self.features["dlrm"]]
        return pl.concat([users, self.candidates_frame(user, item_ids)], how="horizontal").select(names)

    def candidates_frame(self, user: UserState, item_ids: list[int]) -> pl.DataFrame:
        """The ranker's item, cross and context inputs, one row per candidate (``f:<feature>`` columns)."""
        n = len(item_ids)
        categories = [self.online.category.get(i) for i in item_ids]
        rows = np.fromiter((self.online.item_row(i, -1) for i in item_ids), np.int64, n)
        known = rows >= 0
        # one eager query over arrays (a lazy one, or one per step, costs milliseconds more a request)
        columns: dict[str, object] = {name: values[np.where(known, rows, 0)]
                                      for name, values in self._item_arrays.items()}
        if not known.all():  # an item outside the items table: what the builder gives it (null, then 0)
            columns = {k: pl.Series(k, v).set(pl.Series(~known), None) for k, v in columns.items()}
        columns[ITEM] = np.asarray(item_ids, dtype=np.int64)
        columns[TS] = pl.Series(TS, np.full(n, user.at_us), dtype=pl.Int64).cast(pl.Datetime("us", "UTC"))
        columns[POSITION] = np.zeros(n, np.int64)
        for name, value in user.columns.items():
            if name.startswith(USER_COUNTS + "n:"):
                columns[name] = np.full(n, value, np.int64)
        columns.update(self.reader.items(user, item_ids, categories))
        return pl.DataFrame(columns).select(self._candidate_exprs)

    def ranking_inputs(self, user: UserState, item_ids: list[int],
                       specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
        """The ranker's input arrays (``ranking_frame``'s values; the user's row broadcast, not copied per row)."""
        users, candidates = self.user_frame(user), self.candidates_frame(user, item_ids)
        out = {}
        for s in specs:
            if F + s.name in candidates.columns:
                out[s.name] = _array(candidates, s)
            else:
                out[s.name] = np.broadcast_to(_array(users, s), (len(item_ids), *s.shape))
        return out

    def query_inputs(self, user: UserState, specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
        return self.inputs(self.user_frame(user), specs)  # (its columns: selecting them first costs a query)

    def _history(self, f: Feature, items: list[int]) -> pl.Series:
        """A history feature's embedding indices (newest first, 0-padded), as the builder's state holds them: of
        the items themselves (the encoders' index, as the builder computes it) or of the item attribute whose table
        the history shares (that feature's encoded value in the items table; 0 outside it)."""
        items = items[: f.length]
        table = self.schema[f.embedding_table]
        if table.kind == Kind.ITEM_ID:
            indices = self._embedding_rows(table.name, items)
        else:
            values = self._item_static[F + table.name]
            rows = [self.online.item_row(i) for i in items]
            indices = [0 if r is None or values[r] is None else values[r] for r in rows]
        return pl.Series(F + f.name, [indices + [0] * (f.length - len(items))], dtype=pl.Array(pl.Int64, f.length))

    def _embedding_rows(self, table: str, items: list[int]) -> list[int]:
        """Each item's row in embedding table ``table`` (`recsys.data.encoders.Encoders.index`), memoised per item
        (the catalog is the dataset's: the index of an item never changes)."""
        memo = self._indices.setdefault(table, {})
        missing = [i for i in dict.fromkeys(items) if i not in memo]
        if missing:
            found = pl.select(self.encoders.index(table, pl.lit(pl.Series(missing, dtype=pl.Int64)))).to_series()
            memo.update(zip(missing, found.to_list(), strict=True))
        return [memo[i] for i in items]

    def inputs(self, frame: pl.DataFrame, specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
        """Model input arrays of ``specs`` from a `query_frame` / `ranking_frame`."""
        return {s.name: _array(frame, s) for s in specs}


def _array(frame: pl.DataFrame, spec: TensorSpec) -> np.ndarray:
    """One input's array from encoded ``f:<feature>`` rows (as `recsys.export.signature.serving_inputs` reads a
    table)."""
    return frame[F + spec.name].to_numpy().astype(spec.numpy_dtype).reshape(frame.height, *spec.shape)
