"""Canary and A/B traffic in the ingress (Ray Serve has no traffic splitting of its own).

Each replica follows the rollout state file (`recsys.deploy.rollout`), re-reading it when it changes. A user
goes to the candidate when a stable hash of (the candidate's version, the user id) falls below the candidate's
share: the same users on every replica and every request, a fresh draw for each new candidate. The replica
keeps the candidate's last ranking calls; when their error rate or p99 passes the state's thresholds it stops
sending users to the candidate at once and writes the rollback (with the reason) into the state, so every
replica follows. The rollback is written only over the state it acted on (compare-and-swap on its revision): when
the file has moved on, the newer state wins and the replica follows it at its next refresh.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import deque
from dataclasses import replace
from pathlib import Path

import numpy as np

from recsys.deploy import rollout
from recsys.deploy.rollout import RolloutConflict, RolloutState

log = logging.getLogger(__name__)


def bucket(key: str, user_id: int) -> float:
    """A user's stable position in [0, 1) for the experiment ``key``."""
    digest = hashlib.blake2b(f"{key}:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class Canary:
    def __init__(self, path: str | Path | None, model: str, default_version: str = ""):
        self.path = Path(path) if path else None
        self.state = RolloutState(model=model, production=default_version)
        self._seen: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) of the file last read
        self._calls: deque[tuple[bool, float]] = deque()
        self.refresh()

    def refresh(self) -> bool:
        """Re-read the state file if it changed; True when the state changed (any field, not only the revision:
        a file written anew, or put back from a copy, may repeat a revision with another state)."""
        if self.path is None:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._seen == seen:
            return False
        self._seen = seen
        try:
            state = rollout.read(self.path)
        except Exception as exc:  # a broken file keeps the last good state
            log.error("ignoring rollout state %s: %s", self.path, exc)
            return False
        if state is None or state == self.state:
            return False
        if state.model != self.state.model:
            log.error("ignoring rollout state %s: it is for model %r, this app ranks with %r", self.path, state.model,
                      self.state.model)
            return False
        if state.candidate != self.state.candidate:
            self._calls.clear()
        self.state = state
        return True

    def variant(self, user_id: int) -> tuple[str, str]:
        """(variant, Triton version) for a user."""
        s = self.state
        if s.candidate is not None and s.candidate_share > 0 and bucket(s.candidate, user_id) < s.candidate_share:
            return "candidate", s.candidate
        return "production", s.production

    def record(self, ok: bool, ms: float) -> str | None:
        """Note a candidate ranking call; the rollback reason when the thresholds are now passed."""
        t = self.state.thresholds
        self._calls.append((ok, ms))
        while len(self._calls) > t.window:
            self._calls.popleft()
        if len(self._calls) < t.min_requests or self.state.candidate is None:
            return None
        errors = sum(not ok for ok, _ in self._calls) / len(self._calls)
        p99 = float(np.percentile([ms for _, ms in self._calls], 99))
        if errors > t.max_error_rate:
            return (f"candidate {self.state.candidate} failed {errors:.0%} of its last {len(self._calls)} ranking "
                    f"calls (threshold {t.max_error_rate:.0%})")
        if p99 > t.max_p99_ms:
            return (f"candidate {self.state.candidate}'s ranking p99 was {p99:.0f} ms over its last "
                    f"{len(self._calls)} calls (threshold {t.max_p99_ms:.0f} ms)")
        return None

    def roll_back(self, reason: str) -> RolloutState | None:
        """Send the candidate's users to production now, and record it in the state for every replica. Returns the
        state written (None: there is no file, or someone changed it first; theirs wins at the next refresh)."""
        acted_on = self.state
        self.state = replace(acted_on, candidate=None, candidate_share=0.0)
        self._calls.clear()
        if self.path is None:
            return None
        try:
            self.state = rollout.write(self.path, self.state, f"automatic rollback: {reason}",
                                       expect_revision=acted_on.revision,
                                       event={"action": "automatic_rollback", "rolled_back": acted_on.candidate})
        except RolloutConflict as exc:
            log.warning("automatic rollback not recorded: %s", exc)
            return None
        return self.state
