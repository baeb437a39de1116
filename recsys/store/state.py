"""The live feature state in Valkey: what each event changes, and how it is read back as of an instant.

The state is the schema's (`recsys.data.state_spec.StateSpec`), kept per user and per item. Every key of one user
(or item) carries the same hash tag, ``<ns>:{u:<code>}:…`` / ``<ns>:{i:<code>}:…``, so one event's change to one
side is a single atomic script on one shard, on a single server and on Valkey / Redis Cluster alike:

==============================  =================================================================================
``{u:U}:n``  (hash)              ``n:<types>`` counters; ``last:<types>`` the latest event time (µs since epoch)
``{u:U}:h:<types>``  (zset)      the last N events of a history's types: score = time (µs), member =
                                 ``<event id + 2^63, 20 digits>:<item>`` (ties in time ordered by event id, as the
                                 offline build orders them); trimmed to the longest history on those types
``{u:U}:c``  (hash)              ``n:<types>|<category>`` counters, for the category shares
``{u:U}:bought``  (set)          items purchased (serving's purchase filter)
``{i:I}:n``  (hash)              ``n:<types>`` counters (event counts, rate numerators and denominators)
``{i:I}:w<days>:<types>``        the events of a trailing window: score = time, member = event id; what falls out
  (zset)                         of the window behind the newest event is removed
``{u:U}:seen``, ``{i:I}:seen``   event ids applied to that side (zset by time), kept for ``dedupe_window_s`` of
  (zset)                         event time behind the newest: an event delivered twice counts once
==============================  =================================================================================

Reading "as of" an instant ``t`` (`read_state`) gives exactly the offline builder's state strictly before ``t``
for the events applied so far, provided none of them is at or after ``t`` (the clock serving reads with makes sure:
`recsys.store.clock`): counters and last times as they are, histories below ``t``, window counts in ``[t - days, t)``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import chain

import numpy as np
import polars as pl
import redis
from redis.cluster import RedisCluster

from recsys.data.state_spec import (
    ITEM_COUNTS,
    THEN,
    USER_COUNTS,
    StateSpec,
    TypeSet,
    category_prefix,
    count_column,
    last_column,
    window_prefix,
)

DEFAULT_NAMESPACE = "rs"
DAY_US = 86_400_000_000
ID_OFFSET = 2**63  # event ids are signed int64: shifted to sort as text in numeric order

# One side of one event, atomically: skip it if its event id was applied already, else apply each op.
#   KEYS[1] the side's seen set, KEYS[2..] the state keys the ops name by index
#   ARGV[1] event id, ARGV[2] event time (µs), ARGV[3] forget seen ids before this time,
#   then one (op, key index, a, b) quadruple per op
APPLY_LUA = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
local ts = ARGV[2]
for i = 4, #ARGV, 4 do
  local op, key, a, b = ARGV[i], KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3]
  if op == 'incr' then
    redis.call('HINCRBY', key, a, 1)
  elseif op == 'max' then
    local seen = redis.call('HGET', key, a)
    if (not seen) or tonumber(seen) < tonumber(ts) then redis.call('HSET', key, a, ts) end
  elseif op == 'top' then
    redis.call('ZADD', key, ts, a)
    redis.call('ZREMRANGEBYRANK', key, 0, -(tonumber(b) + 1))
  elseif op == 'since' then
    redis.call('ZADD', key, ts, a)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (tonumber(ts) - tonumber(b)))
  elseif op == 'add' then
    redis.call('SADD', key, a)
  else
    return redis.error_reply('unknown op ' .. op)
  end
end
return 1
"""


@dataclass(frozen=True)
class StoreEvent:
    """One behaviour event as the store applies it (ids are the pipeline's int64 codes, `recsys.ids`)."""

    event_id: int
    ts_us: int  # microseconds since the epoch, UTC
    user_id: int
    item_id: int
    event_type: str

    @classmethod
    def rows(cls, events: pl.DataFrame) -> list[StoreEvent]:
        """The store events of a validated events frame (in its row order)."""
        ts = events["timestamp"].cast(pl.Datetime("us", "UTC")).dt.epoch("us")
        return [cls(*row) for row in zip(events["event_id"].to_list(), ts.to_list(), events["user_id"].to_list(),
                                         events["item_id"].to_list(), events["event_type"].cast(pl.String).to_list(),
                                         strict=True)]


EPOCH, MICROSECOND = datetime(1970, 1, 1, tzinfo=UTC), timedelta(microseconds=1)


def to_us(when: datetime) -> int:
    """Microseconds since the epoch, exactly (a naive time is UTC; a float timestamp would round some away)."""
    return ((when if when.tzinfo else when.replace(tzinfo=UTC)) - EPOCH) // MICROSECOND


def from_us(us: int) -> datetime:
    return EPOCH + us * MICROSECOND


def _ordered(event_id: int, item_id: int) -> str:
    return f"{event_id + ID_OFFSET:020d}:{item_id}"


def _item_of(member: bytes) -> int:
    return int(member.split(b":", 1)[1])


def _types_key(types: TypeSet) -> str:
    return "+".join(types)


@dataclass(frozen=True)
class StateLayout:
    """Key names, and the ops each event type makes on each side (`StateSpec` → Valkey)."""

    spec: StateSpec
    namespace: str = DEFAULT_NAMESPACE
    dedupe_window_s: float = 600.0
    history_sets: dict[TypeSet, int] = field(init=False)  # type set -> longest history on it
    category_sets: tuple[TypeSet, ...] = field(init=False)

    def __post_init__(self):
        lengths: dict[TypeSet, int] = {}
        for f in self.spec.histories:
            types = tuple(sorted(f.params["event_types"]))
            lengths[types] = max(lengths.get(types, 0), f.length)
        object.__setattr__(self, "history_sets", lengths)
        object.__setattr__(self, "category_sets", tuple(sorted({tuple(sorted(f.params["event_types"]))
                                                                for f in self.spec.category_shares})))

    def user_key(self, user_id: int, part: str) -> str:
        return f"{self.namespace}:{{u:{user_id}}}:{part}"

    def item_key(self, item_id: int, part: str) -> str:
        return f"{self.namespace}:{{i:{item_id}}}:{part}"

    def user_ops(self, e: StoreEvent, category: str | None) -> tuple[list[str], list[str | int]]:
        """(keys, args) of the apply script for ``e``'s user side."""
        keys, args = [self.user_key(e.user_id, "seen")], [e.event_id, e.ts_us, e.ts_us - self._dedupe_us]

        def op(name: str, part: str, a: str | int, b: str | int = "") -> None:
            key = self.user_key(e.user_id, part)
            if key not in keys:
                keys.append(key)
            args.extend((name, keys.index(key) + 1, a, b))

        for types in sorted(self.spec.user_counters):
            if e.event_type in types:
                op("incr", "n", count_column(types))
        for types in sorted(self.spec.user_last_seen):
            if e.event_type in types:
                op("max", "n", last_column(types))
        for types, length in sorted(self.history_sets.items()):
            if e.event_type in types:
                op("top", f"h:{_types_key(types)}", _ordered(e.event_id, e.item_id), length)
        if category is not None:
            for types in self.category_sets:
                if e.event_type in types:
                    op("incr", "c", f"{count_column(types)}|{category}")
        if e.event_type == "purchase":
            op("add", "bought", e.item_id)
        return keys, args

    def item_ops(self, e: StoreEvent) -> tuple[list[str], list[str | int]]:
        """(keys, args) of the apply script for ``e``'s item side."""
        keys, args = [self.item_key(e.item_id, "seen")], [e.event_id, e.ts_us, e.ts_us - self._dedupe_us]
        for types in sorted(self.spec.item_counters):
            if e.event_type in types:
                if len(keys) == 1:
                    keys.append(self.item_key(e.item_id, "n"))
                args.extend(("incr", 2, count_column(types), ""))
        for days, sets in self.spec.windows.items():
            for types in sorted(sets):
                if e.event_type in types:
                    keys.append(self.item_key(e.item_id, f"w{days}:{_types_key(types)}"))
                    args.extend(("since", len(keys), e.event_id, days * DAY_US))
        return keys, args

    @property
    def _dedupe_us(self) -> int:
        return int(self.dedupe_window_s * 1_000_000)


class StateWriter:
    """Applies events to the state, pipelined: two script calls per event (its user side and its item side)."""

    def __init__(self, client: redis.Redis, layout: StateLayout, categories: Mapping[int, str | None]):
        self.client, self.layout, self.categories = client, layout, categories
        self._apply = client.register_script(APPLY_LUA)
        self._counted = layout.spec.event_types | {"purchase"}

    def apply(self, events: Iterable[StoreEvent]) -> int:
        """Apply ``events`` (each at most once, whatever was applied before); returns how many sides changed.
        On a cluster, one pipeline per node: each side's keys share a hash tag, so its script runs where they are."""
        pipes: dict[str, redis.client.Pipeline] = {}
        for e in events:
            if e.event_type not in self._counted:
                continue
            for keys, args in (self.layout.user_ops(e, self.categories.get(e.item_id)), self.layout.item_ops(e)):
                if len(args) > 3:  # some op on this side
                    self._apply(keys=keys, args=args, client=self._pipeline(pipes, keys[0]))
        return sum(sum(pipe.execute()) for pipe in pipes.values())

    def _pipeline(self, pipes: dict[str, redis.client.Pipeline], key: str) -> redis.client.Pipeline:
        """The pipeline to the server that holds ``key`` (a cluster's pipelines refuse scripts: the node's own)."""
        node = self.client.get_node_from_key(key) if isinstance(self.client, RedisCluster) else None
        name = "" if node is None else node.name
        if name not in pipes:
            pipes[name] = (self.client if node is None else node.redis_connection).pipeline(transaction=False)
        return pipes[name]


@dataclass(frozen=True)
class UserState:
    """One user's live state as of ``at_us`` (`StateReader.user`)."""

    user_id: int
    at_us: int
    columns: dict[str, object]  # __u_n:… ints, __u_last:… µs or None, __history:<types> item ids newest first
    by_category: dict[str, int]  # "n:<types>|<category>" -> count
    bought: set[int]
    encoded: dict = field(default_factory=dict, compare=False)  # per dataset: the user's encoded features

    @property
    def has_events(self) -> bool:
        """Whether any event of the user's has changed the state (a user outside the dataset is then not cold)."""
        return any(self.columns.values()) or bool(self.by_category or self.bought)


# Every candidate's item state in one call: KEYS per item: its counters hash (if any counters), then one zset per
# window; ARGV: #counter fields, #windows, the instant (µs), the fields, each window's lower bound. Returns, per item,
# the counters then the window counts, as integers. (Its keys span many slots: on a cluster the reader sends the same
# commands pipelined to the nodes instead, `StateReader._read_items_by_node`.)
READ_ITEMS_LUA = """
local nf, nw, at = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local fields = {}
for j = 1, nf do fields[j] = ARGV[3 + j] end
local stride = (nf > 0 and 1 or 0) + nw
local out = {}
for base = 0, #KEYS - 1, stride do
  local k = base + 1
  if nf > 0 then
    local values = redis.call('HMGET', KEYS[k], unpack(fields))
    for j = 1, nf do out[#out + 1] = tonumber(values[j]) or 0 end
    k = k + 1
  end
  for w = 1, nw do
    out[#out + 1] = redis.call('ZCOUNT', KEYS[k + w - 1], ARGV[3 + nf + w], '(' .. at)
  end
end
return out
"""


class StateReader:
    """Reads a request's state, as the columns the feature expressions read (`recsys.data.features.encoded_value`):
    the user's with the clock in one pipelined round trip, then the candidates' as of the same instant in one
    script call."""

    def __init__(self, client: redis.Redis, layout: StateLayout, clock: str = "events"):
        self.client, self.layout, self.clock = client, layout, clock  # clock: `recsys.store.clock`
        self._read_items = client.register_script(READ_ITEMS_LUA)
        self._fields = [count_column(t) for t in sorted(layout.spec.item_counters)]
        self._windows = [(days, types) for days, sets in layout.spec.windows.items() for types in sorted(sets)]
        self._keys: dict[int, list[str]] = {}  # item -> the keys `READ_ITEMS_LUA` reads (named once per item)

    def _item_keys(self, item: int) -> list[str]:
        if (keys := self._keys.get(item)) is None:
            parts = (["n"] if self._fields else []) + [f"w{d}:{_types_key(t)}" for d, t in self._windows]
            keys = self._keys[item] = [self.layout.item_key(item, part) for part in parts]
        return keys

    def user(self, user_id: int, at_us: int | None = None) -> UserState:
        """The user's state as of ``at_us`` (None: the clock's now)."""
        lay, pipe = self.layout, self.client.pipeline(transaction=False)
        pipe.hget(clock_key(lay.namespace), "events")
        pipe.hgetall(lay.user_key(user_id, "n"))
        for types, length in sorted(lay.history_sets.items()):
            pipe.zrevrange(lay.user_key(user_id, f"h:{_types_key(types)}"), 0, length - 1, withscores=True)
        if lay.category_sets:
            pipe.hgetall(lay.user_key(user_id, "c"))
        pipe.smembers(lay.user_key(user_id, "bought"))
        replies = iter(pipe.execute())
        newest = next(replies)
        if at_us is None:
            at_us = int(newest) + 1 if self.clock == "events" and newest is not None else time.time_ns() // 1_000
        counters = {k.decode(): int(v) for k, v in next(replies).items()}
        spec = lay.spec
        columns: dict[str, object] = {USER_COUNTS + count_column(t): counters.get(count_column(t), 0)
                                      for t in sorted(spec.user_counters)}
        for t in sorted(spec.user_last_seen):
            columns[USER_COUNTS + last_column(t)] = counters.get(last_column(t))
        for types in sorted(lay.history_sets):  # strictly before the instant, newest first
            columns[history_column(types)] = [_item_of(m) for m, score in next(replies) if score < at_us]
        by_category = {k.decode(): int(v) for k, v in next(replies).items()} if lay.category_sets else {}
        return UserState(user_id, at_us, columns, by_category, {int(i) for i in next(replies)})

    def items(self, user: UserState, item_ids: list[int], categories: list[str | None]) -> dict[str, np.ndarray]:
        """The candidates' columns as of ``user.at_us`` (one int64 per item): ``__i_n:…``, ``__w<d>_n:…`` (and
        ``__then__w<d>_n:…`` = 0: the window is counted directly), and from the user's state ``__c<feature>_n:…``
        for each candidate's category (``categories``). One script call (`READ_ITEMS_LUA`) reads them all."""
        spec, at_us, fields, windows = self.layout.spec, user.at_us, self._fields, self._windows
        bounds = [at_us - days * DAY_US for days, _ in windows]
        if isinstance(self.client, RedisCluster):
            flat = self._read_items_by_node(item_ids, bounds, at_us)
        else:
            keys = list(chain.from_iterable(map(self._item_keys, item_ids)))
            args = [len(fields), len(windows), at_us, *fields, *bounds]
            flat = np.asarray(self._read_items(keys=keys, args=args) if keys else [], dtype=np.int64)
        per_item = flat.reshape(len(item_ids), len(fields) + len(windows))
        items: dict[str, np.ndarray] = {ITEM_COUNTS + f: per_item[:, n] for n, f in enumerate(fields)}
        for n, (days, types) in enumerate(windows):
            items[window_prefix(days) + count_column(types)] = per_item[:, len(fields) + n]
            items[THEN + window_prefix(days) + count_column(types)] = np.zeros(len(item_ids), np.int64)
        for f in spec.category_shares:
            field_of = count_column(f.params["event_types"])
            items[category_prefix(f) + field_of] = np.array(
                [user.by_category.get(f"{field_of}|{c}", 0) if c is not None else 0 for c in categories], np.int64)
        return items

    def _read_items_by_node(self, item_ids: list[int], bounds: list[int], at_us: int) -> np.ndarray:
        """`READ_ITEMS_LUA`'s answer read from a cluster: its keys span the slots of every candidate, and a script
        may touch one slot only, so the same commands go pipelined to the nodes that hold them."""
        pipe = self.client.pipeline()
        for item in item_ids:
            keys = iter(self._item_keys(item))
            if self._fields:
                pipe.hmget(next(keys), self._fields)
            for key, low in zip(keys, bounds, strict=True):
                pipe.zcount(key, low, f"({at_us}")
        flat = []
        for reply in pipe.execute():
            flat.extend(int(v or 0) for v in reply) if isinstance(reply, list) else flat.append(int(reply))
        return np.asarray(flat, dtype=np.int64)


def clock_key(namespace: str) -> str:
    return f"{namespace}:clock"


HISTORY = "__history:"


def history_column(types: TypeSet) -> str:
    """The reader's column of a history type set's item ids (newest first)."""
    return HISTORY + _types_key(types)


def reset(client: redis.Redis, namespace: str = DEFAULT_NAMESPACE) -> int:
    """Delete every key of ``namespace`` (the state, the stream, the clock); returns how many."""
    deleted, batch = 0, []
    for key in client.scan_iter(match=f"{namespace}:*", count=1_000):
        batch.append(key)
        if len(batch) == 1_000:
            deleted += client.delete(*batch)
            batch = []
    return deleted + (client.delete(*batch) if batch else 0)
