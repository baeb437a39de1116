"""The event-log sink: reads the event stream (group ``sink``) and appends every event to the JSON-lines event log
that batch ingest, the monitor and the retraining loop read (`recsys.eventlog.feedback`: the same files, the same
format, fsynced before the entries are acknowledged). The next dataset is then built from exactly the events the
live store applied.

A sink killed between its write and its acknowledgement writes those events again when it restarts: the copies are
the same rows with the same ``event_id``, which every reader keeps once.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import redis

from recsys.eventlog.feedback import FeedbackLog
from recsys.store.state import DEFAULT_NAMESPACE
from recsys.store.stream import VARIANT, EventStream, decode
from recsys.store.worker import Entries, StreamWorker

GROUP = "sink"


class EventSink(StreamWorker):
    """Appends each entry to the event log (fsynced), then acknowledges."""

    group = GROUP

    def __init__(self, client: redis.Redis, event_log: str | Path, namespace: str = DEFAULT_NAMESPACE,
                 name: str = "sink-1", batch: int = 1_000, block_ms: int = 500, claim_idle_s: float = 30.0):
        super().__init__(EventStream(client, namespace), name, batch, block_ms, claim_idle_s)
        self.log = FeedbackLog(event_log)
        self.written = 0

    def handle(self, entries: Entries) -> None:
        by_variant: dict[str, list[dict]] = defaultdict(list)
        for _, fields in entries:
            row = decode(fields)
            row["timestamp"] = row["timestamp"].isoformat()
            by_variant[str(row.pop(VARIANT, ""))].append(row)
        for variant, rows in by_variant.items():
            self.written += len(self.log.append(rows, variant or None))
