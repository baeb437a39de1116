"""One member of a consumer group of the event stream: at least once, acknowledged after its work.

A worker reads a batch, handles it (`handle`: apply it to the live state, write it to the event log) and only then
acknowledges it. On start, and after the store came back, it first handles what it had been given and had not
acknowledged (a crash between the two), and takes over what another member of its group was given and left for
``claim_idle_s`` (it died). Handling an entry twice must be harmless: event ids make it so.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from recsys.store.stream import EventStream

log = logging.getLogger(__name__)
Entries = list[tuple[bytes, dict[bytes, bytes]]]


class StreamWorker:
    group = ""

    def __init__(self, stream: EventStream, name: str, batch: int = 1_000, block_ms: int = 500,
                 claim_idle_s: float = 30.0):
        self.stream, self.name, self.batch, self.block_ms = stream, name, batch, block_ms
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.entries = 0

    def handle(self, entries: Entries) -> None:
        raise NotImplementedError

    def step(self, pending: bool = False) -> int:
        """Read, handle and acknowledge one batch (``pending``: this worker's unacknowledged entries); returns how
        many entries it held."""
        entries = self.stream.read(self.group, self.name, self.batch, self.block_ms, pending=pending)
        if not entries:
            return 0
        self.handle([(entry_id, fields) for entry_id, fields in entries if fields])  # (trimmed: no fields)
        self.stream.ack(self.group, [entry_id for entry_id, _ in entries])
        self.entries += len(entries)
        return len(entries)

    def recover(self) -> int:
        """Handle what was delivered and not acknowledged: this worker's, and that of members gone for
        ``claim_idle_s``. Returns how many entries."""
        self.stream.ensure_groups()
        self.stream.claim_abandoned(self.group, self.name, self.claim_idle_ms)
        done = 0
        while n := self.step(pending=True):
            done += n
        return done

    def run(self, stop: threading.Event | None = None, idle_exit_s: float | None = None,
            trim_every: int = 50) -> None:
        """Recover, then handle new entries until ``stop`` is set (or nothing arrived for ``idle_exit_s``); the
        store going away is waited out (retried every second), not fatal."""
        stop = stop or threading.Event()
        recovered, idle_since, steps = False, time.monotonic(), 0
        while not stop.is_set():
            try:
                if not recovered:
                    log.info("%s %s: %d unacknowledged entries handled on start", self.group, self.name,
                             self.recover())
                    recovered = True
                n = self.step()
                steps += 1
                if steps % trim_every == 0:
                    self.stream.trim()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("%s %s: the store is unreachable (%s); retrying", self.group, self.name, exc)
                recovered = False  # what was pending is handled again (harmlessly) on reconnect
                stop.wait(1.0)
                continue
            if n:
                idle_since = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                return
