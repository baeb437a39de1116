"""The instant live features are read as of.

``events`` (the default): just after the newest event applied (the consumer advances it with every batch), so a
log replayed at any speed, or a simulated shop whose events are not in today's time, reads its features as the
offline build would at that instant, and every applied event is strictly before it. ``wall``: the machine's
clock, for a shop whose events arrive as they happen (recency then keeps growing between a user's visits).
"""

from __future__ import annotations

import redis

from recsys.store.state import clock_key

CLOCKS = ("events", "wall")

ADVANCE_LUA = """
local seen = redis.call('HGET', KEYS[1], 'events')
if (not seen) or tonumber(seen) < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'events', ARGV[1]) end
return 1
"""


class StoreClock:
    """Advances the ``events`` clock (the consumer); `recsys.store.state.StateReader` reads it with each user."""

    def __init__(self, client: redis.Redis, namespace: str):
        self.client, self.key = client, clock_key(namespace)
        self._advance = client.register_script(ADVANCE_LUA)

    def advance(self, newest_us: int, client: redis.Redis | None = None) -> None:
        """Record that events up to ``newest_us`` are applied (never moves back)."""
        self._advance(keys=[self.key], args=[newest_us], client=client or self.client)

    def newest_event_us(self) -> int | None:
        value = self.client.hget(self.key, "events")
        return None if value is None else int(value)
