"""Live features: every schema feature of a (user, candidates) request computed as of an instant from the live
store's state (`recsys.store.state`) and the dataset's static tables, as the offline builder computes it.

A request reads the columns the point-in-time builder joins onto an example before it encodes it
(`recsys.data.state_spec`): the state read from the store, each per-row feature (ids with a vocabulary,
attributes) already encoded in the dataset's online tables, the user's signup time, ``position`` 0. `raw_array`
and `recsys.data.encoders.Encoders.array` then compute and encode each feature on numpy arrays: the definitions of
`recsys.data.features.raw_value` and `Encoders.expr`, on a request's hundred rows, where a Polars query costs a
millisecond or more. The parity test replays a log through the store and holds every input served at many instants
to the offline builder's for an example at that instant. A user or item outside the dataset's tables is what the
offline build makes of one: unknown attributes, no signup, and whatever state its events have built.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import polars as pl

from recsys.data.features import ITEM, META_SIGNUP, POSITION, TS, USER, per_row_table
from recsys.data.state_spec import (
    ITEM_COUNTS,
    SIGNUP_COLUMN,
    THEN,
    USER_COUNTS,
    category_prefix,
    count_column,
    last_column,
    window_prefix,
)
from recsys.errors import RecsysError
from recsys.export.signature import TensorSpec
from recsys.online.features import OnlineFeatures
from recsys.schema import Feature, Kind, Scope
from recsys.store.state import StateReader, UserState, history_column, to_us

MODEL_PARTS = ("two_tower.user", "dlrm")
SECOND_US = 1_000_000

Columns = dict[str, np.ndarray]  # a request's state columns, one value per row
Nulls = dict[str, np.ndarray]  # the nullable ones' masks (True: null)


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
        signup = online.users[META_SIGNUP].dt.epoch("us")
        self._signup, self._no_signup = signup.fill_null(0).to_numpy(), signup.is_null().to_numpy()
        self._user_static = _encoded_columns(online.users, [f for f in self._user_f if per_row_table(f) == "users"])
        item_static = [f for f in self.schema.by_scope(Scope.ITEM) if per_row_table(f) == "items"]
        self._item_static = _encoded_columns(online.items, item_static)
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
        return self.online.user(user.user_id) is not None or user.has_events

    def user_inputs(self, user: UserState) -> dict[str, np.ndarray]:
        """Every user feature's encoded input, one row each (feature name -> array); encoded once per request and
        dataset (the query tower's inputs and the ranker's share it)."""
        key = self.online.dataset.id
        if key in user.encoded:
            return user.encoded[key]
        row = self.online.user(user.user_id)
        cols: Columns = {USER: np.array([user.user_id], np.int64), TS: np.array([user.at_us], np.int64),
                         SIGNUP_COLUMN: np.array([0 if row is None else self._signup[row.index]], np.int64)}
        nulls: Nulls = {SIGNUP_COLUMN: np.array([row is None or bool(self._no_signup[row.index])])}
        for name, value in user.columns.items():
            if name.startswith(USER_COUNTS + "last:"):
                cols[name], nulls[name] = np.array([value or 0], np.int64), np.array([value is None])
            elif name.startswith(USER_COUNTS):
                cols[name] = np.array([value], np.int64)
        out = {}
        for f in self._user_f:
            if f.name in self._user_static:
                out[f.name] = self._user_static[f.name][[-1 if row is None else row.index]]
            elif f.op == "user_history":
                out[f.name] = self.encoders.array(f, self._history(f, user.columns[history_column(tuple(sorted(
                    f.params["event_types"])))]))
            else:
                out[f.name] = self.encoders.array(f, *raw_array(f, cols, nulls))
        user.encoded[key] = out
        return out

    def query_inputs(self, user: UserState, specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
        """The query tower's input arrays (one row)."""
        values = self.user_inputs(user)
        return {s.name: _shaped(values[s.name], s, 1) for s in specs}

    def ranking_inputs(self, user: UserState, item_ids: list[int],
                       specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
        """The ranker's input arrays, one row per candidate, position 0; reads the candidates' state as of the
        user's instant (one round trip). The user's row is broadcast, not copied per candidate."""
        users, candidates, n = self.user_inputs(user), self.candidate_inputs(user, item_ids), len(item_ids)
        return {s.name: _shaped(candidates[s.name], s, n) if s.name in candidates
                else np.broadcast_to(_shaped(users[s.name], s, 1), (n, *s.shape)) for s in specs}

    def candidate_inputs(self, user: UserState, item_ids: list[int]) -> dict[str, np.ndarray]:
        """The ranker's item, cross and context inputs, one row per candidate (feature name -> array)."""
        n = len(item_ids)
        categories = [self.online.category.get(i) for i in item_ids]
        rows = np.fromiter((self.online.item_row(i, -1) for i in item_ids), np.int64, n)
        cols: Columns = {ITEM: np.asarray(item_ids, np.int64), TS: np.full(n, user.at_us, np.int64),
                         POSITION: np.zeros(n, np.int64)}
        for name, value in user.columns.items():
            if name.startswith(USER_COUNTS + "n:"):
                cols[name] = np.full(n, value, np.int64)
        cols.update(self.reader.items(user, item_ids, categories))
        out = {}
        for f in self._candidate_f:
            if f.name in self._item_static:  # an item outside the items table: its last row, unknown (0)
                out[f.name] = self._item_static[f.name][rows]
            else:
                out[f.name] = self.encoders.array(f, *raw_array(f, cols, {}))
        return out

    def _history(self, f: Feature, items: list[int]) -> np.ndarray:
        """A history feature's embedding indices (newest first, 0-padded; one row), as the builder's state holds
        them: of the items themselves (the encoders' index, as the builder computes it) or of the item attribute
        whose table the history shares (that feature's encoded value in the items table; 0 outside it)."""
        items = items[: f.length]
        table = self.schema[f.embedding_table]
        if table.kind == Kind.ITEM_ID:
            indices = self.encoders.index_array(table.name, np.asarray(items, np.int64))
        else:
            rows = np.fromiter((self.online.item_row(i, -1) for i in items), np.int64, len(items))
            indices = self._item_static[table.name][rows].astype(np.int64)
        return np.pad(indices, (0, f.length - len(items)))[None, :]


def _encoded_columns(table: pl.DataFrame, features: list[Feature]) -> dict[str, np.ndarray]:
    """Each per-row feature's encoded values in ``table``'s row order, null as unknown (0), with one row more at
    the end: unknown, for a user or item outside the table (row -1)."""
    return {f.name: np.append(table[f.name].fill_null(0).to_numpy(), 0) for f in features}


def _shaped(values: np.ndarray, spec: TensorSpec, n: int) -> np.ndarray:
    return values.astype(spec.numpy_dtype, copy=False).reshape(n, *spec.shape)


def raw_array(f: Feature, cols: Columns, nulls: Nulls) -> tuple[np.ndarray, np.ndarray | None]:
    """`recsys.data.features.raw_value` on arrays: the value of ``f`` before encoding and its nulls (None: none)."""
    p = f.params

    def total(prefix: str, types: list[str]) -> np.ndarray:
        name = prefix + count_column(types)
        return cols[name] if name in cols else np.zeros(len(cols[TS]), np.int64)  # no state yet: nothing happened

    def seconds_since(name: str) -> tuple[np.ndarray, np.ndarray | None]:
        gap = cols[TS] - cols[name]  # whole seconds, truncated toward zero (Polars' Duration.total_seconds)
        return np.where(gap >= 0, gap // SECOND_US, -(-gap // SECOND_US)), nulls.get(name)

    if f.op == "id":
        return cols[p["column"]], None
    if f.op == "user_tenure_days":
        gap, null = seconds_since(SIGNUP_COLUMN)
        return gap / 86400.0, null
    if f.op == "user_event_count":
        return total(USER_COUNTS, p["event_types"]), None
    if f.op == "user_recency_hours":
        gap, null = seconds_since(USER_COUNTS + last_column(p["event_types"]))
        return gap / 3600.0, null
    if f.op == "user_category_share":
        in_category, everywhere = total(category_prefix(f), p["event_types"]), total(USER_COUNTS, p["event_types"])
        some = everywhere > 0
        return np.divide(in_category, everywhere, out=np.zeros(len(some)), where=some), ~some
    if f.op == "item_event_count":
        if not (days := p.get("window_days")):
            return total(ITEM_COUNTS, p["event_types"]), None
        return total(window_prefix(days), p["event_types"]) - total(THEN + window_prefix(days), p["event_types"]), None
    if f.op == "item_rate":
        num, den = total(ITEM_COUNTS, p["numerator"]), total(ITEM_COUNTS, p["denominator"])
        return (num + p["prior"] * p["prior_strength"]) / (den + p["prior_strength"]), None
    if f.op == "position":
        return cols[POSITION], None
    raise ValueError(f"feature {f.name!r}: no live implementation for op {f.op!r}")
