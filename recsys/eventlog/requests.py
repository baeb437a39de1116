"""The request log: what the app served, for monitoring. One JSON line per answer, with the user's model inputs as
the model saw them (``inputs``: encoded, so drift is measured against the training dataset's profile; absent for a
cold start), the variant, and the served items with their scores. A ranked answer also logs what the ranker was
given for each shown item, in the shown order (``ranked``: the dataset whose encoders encoded them, every input
column, and once the inputs all of them share, the user's), so that the next dataset can train on exactly what
was served (`recsys.data.logged_inputs`).

Lines are buffered and written at most every ``flush_s`` seconds or ``max_rows`` rows (not fsynced per request:
this is telemetry, unlike the feedback log), one file per replica: ``<event_log>/requests/requests-<start>-<id>.jsonl``.
A write that fails drops those lines (counted in ``dropped``, logged) and never fails the answer it was logging.
`recsys.monitoring` reads the files with `recsys.eventlog.jsonl`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson

log = logging.getLogger(__name__)
REQUEST_GLOB = "requests/*.jsonl"


class RequestLog:
    def __init__(self, root: str | Path, flush_s: float = 1.0, max_rows: int = 1000,
                 on_drop: Callable[[int], object] | None = None):
        folder = Path(root) / "requests"
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"requests-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(4)}.jsonl"
        self.flush_s, self.max_rows = flush_s, max_rows
        self.dropped = 0  # lines lost to failed writes
        self._on_drop = on_drop
        self._lines: list[str] = []
        self._flushed = time.monotonic()
        self._lock = threading.Lock()

    def add(self, request_id: int, user_id: int, variant: str, inputs: dict[str, np.ndarray] | None,
            items: list[int], scores: np.ndarray | None, cold_start: bool, degraded: bool, total_ms: float,
            ranked: tuple[str, dict[str, np.ndarray], np.ndarray] | None = None) -> None:
        """One answer; ``ranked``: (dataset id, the ranker's inputs, one row per candidate, and the candidate rows
        of ``items`` in order). An input every candidate shares (the user's, broadcast) is logged once, in
        ``shared``."""
        row = {"timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"), "request_id": request_id,
               "user_id": user_id, "variant": variant, "cold_start": cold_start, "degraded": degraded,
               "total_ms": total_ms,
               "items": items, "scores": None if scores is None else [round(float(s), 6) for s in scores]}
        if inputs is not None:  # nested: the encoded `user_id` input is not the shop's user id
            row["inputs"] = {name: a[0] if a[0].size > 1 else a[0].item() for name, a in inputs.items()}
        if ranked is not None:
            dataset, arrays, shown = ranked
            row["ranked"] = {"dataset": dataset,
                             "inputs": {name: a[shown] for name, a in arrays.items() if a.strides[0]},
                             "shared": {name: a[0] for name, a in arrays.items() if not a.strides[0]}}
        # arrays as JSON lists (a float32 as its shortest text: read back as float32 it is the same value)
        self._lines.append(orjson.dumps(row, default=_listed, option=orjson.OPT_SERIALIZE_NUMPY).decode() + "\n")
        if len(self._lines) >= self.max_rows or time.monotonic() - self._flushed >= self.flush_s:
            self.flush()
        elif len(self._lines) == 1:  # the first line since a flush: make sure it is written soon even if no
            with contextlib.suppress(RuntimeError):  # other request comes (no running loop: the next add does)
                asyncio.get_running_loop().call_later(self.flush_s, self.flush)

    def flush(self) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
            self._flushed = time.monotonic()
            if not lines:
                return
            try:
                with open(self.path, "a") as f:
                    f.write("".join(lines))
            except OSError as exc:  # telemetry: lose these lines, not the answers
                self.dropped += len(lines)
                if self._on_drop is not None:
                    self._on_drop(len(lines))
                log.error("request log %s: %d line(s) dropped (%s)", self.path, len(lines), exc)


def _listed(value: object) -> object:
    """What orjson leaves to us: a numpy array that is not C-contiguous (a slice of a broadcast), as a list."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"request log: cannot write a {type(value).__name__}")
