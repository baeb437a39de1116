"""The feedback edge of the loop: impressions, clicks and purchases on served lists, appended to an event log
in the shop event format (`recsys.events.EVENTS`) that the data pipeline ingests.

Each writer (one per ingress replica) appends JSON lines to its own file ``<root>/events/feedback-<id>.jsonl``
and flushes and fsyncs before returning, so an accepted event survives a crash or restart. Read them back
with ``recsys.data.ingest.read_table(root, EVENTS, IngestConfig(events="events/*.jsonl"))``.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from datetime import UTC, datetime
from pathlib import Path

from recsys.events import EVENTS

EVENT_GLOB = "events/*.jsonl"


def new_id() -> int:
    """A random positive int64 (request and event ids: unique without coordination between replicas)."""
    return secrets.randbits(62) + 1


class EventLog:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "events").mkdir(parents=True, exist_ok=True)
        self.path = self.root / "events" / f"feedback-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}.jsonl"
        self._lock = threading.Lock()

    def append(self, events: list[dict]) -> int:
        """Write ``events`` (EVENTS columns; event_id and timestamp filled in when missing) durably."""
        now = datetime.now(UTC).isoformat()
        lines = []
        for e in events:
            row = {c: e.get(c) for c in EVENTS.names}
            row["event_id"] = row["event_id"] or new_id()
            row["timestamp"] = row["timestamp"] or now
            lines.append(json.dumps(row, separators=(",", ":")) + "\n")
        data = "".join(lines).encode()
        with self._lock, open(self.path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return len(lines)
