"""The feedback log: impressions, clicks and purchases on served lists, appended by the serving app in the shop
event format (`recsys.events.EVENTS`) that the data pipeline ingests, plus the ``variant`` that served the list.

Each writer (one per ingress replica) appends JSON lines to its own file ``<root>/events/feedback-<id>.jsonl`` and
flushes and fsyncs before returning, so an accepted event survives a crash or restart. Read them back with
``recsys.data.ingest.read_table(root, EVENTS, FEEDBACK_INGEST)``, validate them with a shop export
(``recsys.data.validate.validate(..., extra_events=[(root, FEEDBACK_INGEST)])``), or follow them live with
`recsys.eventlog.jsonl.JsonlTail`.

Retries are safe. Every event's id is the client's, or derived from what identifies it (`event_id_for`), so an
event sent twice, to the same replica or another, carries the same ``event_id``: a writer skips ids it wrote
recently, and every reader keeps one row per ``event_id``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path

from recsys.config import IngestConfig
from recsys.events import EVENTS
from recsys.ids import ID_COLUMNS

FEEDBACK_GLOB = "events/*.jsonl"
# how the data pipeline reads the log: its ids are the pipeline's own already (a text id's code: `recsys.ids`)
FEEDBACK_INGEST = IngestConfig(events=FEEDBACK_GLOB, format="jsonl", ids=dict.fromkeys(ID_COLUMNS, "integer"),
                               derive_empty_sessions=True)  # (/events takes events without a session)
VARIANT = "variant"  # beside the EVENTS columns: the variant whose list the event is about
INT63 = (1 << 63) - 1


def event_id_for(request_id: int, *identity: object) -> int:
    """A positive int64 that names one event: the same ``(request_id, *identity)`` always gives the same id.

    ``identity`` is the client's idempotency key and the event's place in its request, or (without a key) what
    the event says: user, item, type, position and time as sent.
    """
    digest = hashlib.blake2b(repr((request_id, *identity)).encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") & INT63) or 1


class FeedbackWriteError(OSError):
    """The log could not be written; some of the events may be in it (a retry with the same ids is safe)."""


class FeedbackLog:
    def __init__(self, root: str | Path, remember: int = 100_000):
        self.root = Path(root)
        (self.root / "events").mkdir(parents=True, exist_ok=True)
        self.path = self.root / "events" / f"feedback-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}.jsonl"
        self._lock = threading.Lock()
        self._written: OrderedDict[int, None] = OrderedDict()  # ids this writer wrote, the newest `remember`
        self._remember = remember
        self._torn = False  # the file may end in a partial line (a failed append could not be cut back)

    def _cut_back(self, f, size: int) -> None:
        """Take a failed append's bytes off the end again (else the next line would continue a torn one)."""
        try:
            f.truncate(size)
        except OSError:
            self._torn = True

    def append(self, events: list[dict], variant: str) -> list[dict]:
        """Write ``events`` (EVENTS columns, ``event_id`` set; a missing timestamp is now) durably.

        Returns the events written: the others were repeats (of an event this writer wrote recently, or of one
        earlier in ``events``). Raises `FeedbackWriteError` when the write or the fsync failed.
        """
        now = datetime.now(UTC).isoformat()
        with self._lock:
            fresh, ids = [], set()
            for e in events:  # (the same event twice in one request is one event too)
                if e["event_id"] not in self._written and e["event_id"] not in ids:
                    fresh.append(e)
                    ids.add(e["event_id"])
            lines = []
            for e in fresh:
                row = {c: e.get(c) for c in EVENTS.names}
                row["timestamp"] = row["timestamp"] or now
                row[VARIANT] = variant
                lines.append(json.dumps(row, separators=(",", ":")) + "\n")
            data = "".join(lines).encode()
            try:
                with open(self.path, "ab") as f:
                    before = f.tell()
                    if self._torn:  # an earlier append failed half-way: never glue an event onto its torn line
                        data = b"\n" + data
                    try:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    except OSError:
                        self._cut_back(f, before)
                        raise
                self._torn = False
            except OSError as exc:
                raise FeedbackWriteError(exc.errno, f"{self.path}: {exc.strerror or exc}") from exc
            for event_id in ids:
                self._written[event_id] = None
            while len(self._written) > self._remember:
                self._written.popitem(last=False)
        return fresh
