"""The event stream: behaviour events as entries of one Valkey stream, read by consumer groups.

Entries hold the shop event columns (`recsys.events.EVENTS`, as text: ids as the pipeline's int64 codes, the time as
microseconds since the epoch) and the ``variant`` whose list an event is about, when it is about one. Two groups
read every entry: ``features`` (`recsys.store.consumer`: the live feature state) and ``sink``
(`recsys.store.sink`: the event-log files batch ingest reads). Delivery is at least once: an entry is acknowledged
after its group has applied it, and one delivered again is applied once (event ids de-duplicate). The stream is
trimmed behind the slowest group, never past an entry some group has not acknowledged.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import redis

from recsys.events import EVENTS
from recsys.store.state import DEFAULT_NAMESPACE, StoreEvent, from_us, to_us

GROUPS = ("features", "sink")
VARIANT = "variant"
FIELDS = (*EVENTS.names, VARIANT)


def stream_key(namespace: str = DEFAULT_NAMESPACE) -> str:
    return f"{namespace}:events"


def _text(value: object) -> str:
    return str(to_us(value) if isinstance(value, datetime) else value)


def encode(row: dict) -> dict[str, str]:
    """An event row (EVENTS columns, the time as a datetime or µs) as stream entry fields (nulls left out)."""
    return {name: _text(row[name]) for name in FIELDS if row.get(name) is not None}


def decode(fields: dict[bytes, bytes]) -> dict[str, int | str | datetime]:
    """Stream entry fields back to an event row: ids and position as ints, the time as a UTC datetime."""
    row: dict[str, int | str | datetime] = {}
    for key, value in fields.items():
        name, text = key.decode(), value.decode()
        if name in ("event_type", VARIANT):
            row[name] = text
        elif name == "timestamp":
            row[name] = from_us(int(text))
        else:
            row[name] = int(text)
    return row


def store_event(fields: dict[bytes, bytes]) -> StoreEvent:
    """The state's view of one entry."""
    get = fields.get
    return StoreEvent(int(get(b"event_id")), int(get(b"timestamp")), int(get(b"user_id")),
                      int(get(b"item_id")), get(b"event_type").decode())


class EventStream:
    """Appends to and reads the stream of one namespace."""

    def __init__(self, client: redis.Redis, namespace: str = DEFAULT_NAMESPACE):
        self.client, self.key = client, stream_key(namespace)

    def ensure_groups(self) -> None:
        """Create the stream and its groups (reading from the start) unless they exist."""
        for group in GROUPS:
            try:
                self.client.xgroup_create(self.key, group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def publish(self, rows: Iterable[dict], atomic: bool = True, batch: int = 5_000) -> int:
        """Append event rows; with ``atomic`` all of them or none (one MULTI/EXEC), else pipelined in batches (a
        replay: a failure part-way leaves the earlier batches in, and publishing again is safe). Raises
        `redis.RedisError` when the stream cannot be written. Returns how many were appended. (The groups are
        the workers' to create, reading from the start: `ensure_groups`; nothing is trimmed before they exist.)"""
        pipe, pending, total = self.client.pipeline(transaction=atomic), 0, 0
        for row in rows:
            pipe.xadd(self.key, encode(row))
            pending += 1
            if not atomic and pending == batch:
                pipe.execute()
                total, pending = total + pending, 0
        if pending:
            pipe.execute()
        return total + pending

    def read(self, group: str, consumer: str, count: int, block_ms: int | None, pending: bool = False
             ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Up to ``count`` entries for ``consumer`` of ``group``: new ones (waiting up to ``block_ms``), or with
        ``pending`` those delivered to it before and never acknowledged (after a crash)."""
        reply = self.client.xreadgroup(group, consumer, {self.key: "0" if pending else ">"}, count=count,
                                       block=None if pending else block_ms)
        return reply[0][1] if reply else []

    def claim_abandoned(self, group: str, consumer: str, idle_ms: int, count: int = 1_000) -> int:
        """Take over entries another consumer of ``group`` was given and has not acknowledged for ``idle_ms``
        (it died); they are then this consumer's pending entries. Returns how many."""
        claimed, start = 0, "0-0"
        while True:
            # (raw: redis-py's parsed JUSTID reply drops the cursor)
            start, entries, *_ = self.client.execute_command("XAUTOCLAIM", self.key, group, consumer, idle_ms,
                                                             start, "COUNT", count, "JUSTID")
            claimed += len(entries)
            if start in (b"0-0", "0-0"):
                return claimed

    def ack(self, group: str, ids: list[bytes]) -> None:
        if ids:
            self.client.xack(self.key, group, *ids)

    def trim(self) -> None:
        """Drop the entries every group has acknowledged (behind the slowest group's oldest unacknowledged)."""
        floor = None
        for info in self.client.xinfo_groups(self.key):
            group, last = info["name"], info["last-delivered-id"]
            # (acknowledged between the two calls: then nothing is pending any more)
            oldest = (self.client.xpending(self.key, group)["min"] if info["pending"] else None) or last
            floor = oldest if floor is None or _id(oldest) < _id(floor) else floor
        if floor is not None:  # (the floor entry itself is kept: it may be unacknowledged)
            self.client.xtrim(self.key, minid=floor, approximate=True)

    def length(self) -> int:
        return self.client.xlen(self.key)

    def group(self, name: str) -> dict:
        """Valkey's counters of consumer group ``name`` (``lag``, ``pending``, ``entries-read``, …); {} until it
        exists."""
        if not self.client.exists(self.key):
            return {}
        return next((g for g in self.client.xinfo_groups(self.key) if g["name"] in (name, name.encode())), {})

    def caught_up(self, name: str) -> bool:
        """Whether group ``name`` has acknowledged every entry published so far (true before the first)."""
        if not self.client.exists(self.key):
            return True
        group = self.group(name)
        newest = self.client.xinfo_stream(self.key)["last-generated-id"]
        return bool(group) and group["pending"] == 0 and _id(group["last-delivered-id"]) == _id(newest)


def _id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
