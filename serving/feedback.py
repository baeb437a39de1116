"""The feedback edge of the loop: impressions, clicks and purchases on served lists, appended to an event log
in the shop event format (`recsys.events.EVENTS`) that the data pipeline ingests.

Each writer (one per ingress replica) appends JSON lines to its own file ``<root>/events/feedback-<id>.jsonl``
and flushes and fsyncs before returning, so an accepted event survives a crash or restart. Read them back
with ``recsys.data.ingest.read_table(root, EVENTS, FEEDBACK_INGEST)``, or validate them with a shop export
(``recsys.data.validate.validate(..., extra_events=[(root, FEEDBACK_INGEST)])``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from datetime import UTC, datetime
from pathlib import Path

from recsys.config import IngestConfig
from recsys.events import EVENTS

EVENT_GLOB = "events/*.jsonl"
FEEDBACK_INGEST = IngestConfig(events=EVENT_GLOB, format="jsonl")  # how the data pipeline reads the event log


def new_id() -> int:
    """A random positive int64 (request and event ids: unique without coordination between replicas)."""
    return secrets.randbits(62) + 1


KEY_ENV = "RECSYS_REQUEST_KEY"  # hex; overrides the key file
KEY_FILE = "request.key"
RANDOM_BITS, VARIANT_BITS, TAG_BITS = 38, 2, 22  # a request id: random bits, the variant, a tag (positive int64)
VARIANT_CODES = ("production", "candidate")


class RequestIds:
    """Request ids that say which user they were issued to, and which variant (production or candidate model)
    answered, so /feedback can refuse ids the app never issued to that user and split feedback by variant
    without any state shared between replicas or kept across restarts: 38 random bits, 2 bits of variant and
    a 22-bit HMAC-SHA256 tag of (those 40 bits, the user id) under the app's key. A guessed id passes with
    probability 2**-22."""

    def __init__(self, key: bytes):
        self._key = key

    def _tag(self, nonce: int, user_id: int) -> int:
        digest = hmac.new(self._key, f"{nonce}:{user_id}".encode(), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "big") >> (64 - TAG_BITS)

    def issue(self, user_id: int, variant: str = "production") -> int:
        nonce = (secrets.randbits(RANDOM_BITS) << VARIANT_BITS) | VARIANT_CODES.index(variant)
        return (nonce << TAG_BITS) | self._tag(nonce, user_id)

    def issued_to(self, request_id: int, user_id: int) -> bool:
        nonce, tag = request_id >> TAG_BITS, request_id & ((1 << TAG_BITS) - 1)
        return 0 <= request_id < 1 << (RANDOM_BITS + VARIANT_BITS + TAG_BITS) and hmac.compare_digest(
            tag.to_bytes(3, "big"), self._tag(nonce, user_id).to_bytes(3, "big"))


def variant_of(request_id: int) -> str:
    """The variant that answered a request (its id's variant bits); "unknown" for codes not in use."""
    code = (request_id >> TAG_BITS) & ((1 << VARIANT_BITS) - 1)
    return VARIANT_CODES[code] if code < len(VARIANT_CODES) else "unknown"


def request_key(root: str | Path) -> bytes:
    """The key of `RequestIds`: ``$RECSYS_REQUEST_KEY`` (hex), else ``<root>/request.key``, created once (mode
    0600) and then shared by every replica that writes the same event log."""
    if value := os.environ.get(KEY_ENV):
        return bytes.fromhex(value)
    path = Path(root) / KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
            f.flush()
            os.fsync(f.fileno())
    for _ in range(50):  # another replica may be between creating the file and writing it
        if text := path.read_text().strip():
            return bytes.fromhex(text)
        threading.Event().wait(0.1)
    raise RuntimeError(f"{path} is empty")


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
