"""The instant live features are read as of.

``events`` (the default): just after the newest event applied (the consumer advances it with every batch), so a
log replayed at any speed, or a simulated shop whose events are not in today's time, reads its features as the
offline build would at that instant, and every applied event is strictly before it. ``wall``: the machine's
clock, for a shop whose events arrive as they happen (recency then keeps growing between a user's visits).
"""

from __future__ import annotations

import time

import redis

CLOCKS = ("events", "wall")

ADVANCE_LUA = """
local seen = redis.call('HGET', KEYS[1], 'events')
if (not seen) or tonumber(seen) < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'events', ARGV[1]) end
return 1
"""


class StoreClock:
    def __init__(self, client: redis.Redis, namespace: str, mode: str = "events"):
        if mode not in CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {mode!r}")
        self.client, self.mode, self.key = client, mode, f"{namespace}:clock"
        self._advance = client.register_script(ADVANCE_LUA)

    def advance(self, newest_us: int, client: redis.Redis | None = None) -> None:
        """Record that events up to ``newest_us`` are applied (never moves back)."""
        self._advance(keys=[self.key], args=[newest_us], client=client or self.client)

    def newest_event_us(self) -> int | None:
        value = self.client.hget(self.key, "events")
        return None if value is None else int(value)

    def now_us(self) -> int:
        """The instant to read as of, in µs since the epoch (``events``: 1 µs after the newest applied event;
        none applied yet: the machine's clock)."""
        if self.mode == "events" and (newest := self.newest_event_us()) is not None:
            return newest + 1
        return time.time_ns() // 1_000
