"""The rollout state: what the serving app ranks with, in a small JSON file the ingress replicas watch.

The state (``ServingConfig.rollout_file``) names which Triton version of the ranking model is ``production``,
which (if any) is the ``candidate``, the candidate's share of users, and the thresholds past which a replica sends
the candidate's traffic back to production on its own. Every change is appended to ``<file>.events.jsonl`` with
its reason.

Writers change it by compare-and-swap: `write` takes the revision the writer's change was based on and, holding
an exclusive ``flock`` on ``<file>.lock`` across the read, the comparison, the replacement and the events-log
append, refuses with `RolloutConflict` when the file has moved on since. Revisions therefore only grow, each
written once, and no change is lost to a concurrent writer. Readers take no lock: the file is replaced
atomically (and durably), so a reader sees one whole state or the one before.

Moving a live Triton to a state is `recsys.deploy.triton_control`; the state the registry's aliases call for is
`recsys.deploy.registry_state`.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError
from recsys.io import atomic_write_text


@dataclass(frozen=True)
class Thresholds:
    """When a replica stops sending users to the candidate (over its last ``window`` candidate requests, once
    it has seen ``min_requests``)."""

    max_error_rate: float = 0.05  # share of candidate calls that failed or missed the ranking deadline
    max_p99_ms: float = 250.0  # the candidate's ranking-call p99
    window: int = 200
    min_requests: int = 20


@dataclass(frozen=True)
class RolloutState:
    model: str = "dlrm"  # the Triton ranking model
    production: str = ""  # its Triton version ("" = the newest loaded)
    candidate: str | None = None
    candidate_share: float = 0.0  # of users, by a stable hash of the user id
    registry: dict[str, str] = field(default_factory=dict)  # variant -> registry version (for the record)
    # variant -> the dataset folder its model was trained on: the app encodes that variant's ranking inputs with
    # this dataset's online tables and encoders (a retrained model has its own vocabularies); absent = the app's
    datasets: dict[str, str] = field(default_factory=dict)
    thresholds: Thresholds = field(default_factory=Thresholds)
    revision: int = 0  # 0 = no state written yet
    updated_at: str = ""
    reason: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.candidate_share <= 1.0:
            raise RecsysError(f"rollout: candidate_share must be within [0, 1], got {self.candidate_share}")
        if self.candidate is not None and self.candidate == self.production:
            raise RecsysError(f"rollout: candidate and production are both version {self.candidate}")

    @property
    def versions(self) -> list[str]:
        """The Triton versions this state ranks with."""
        return [v for v in (self.production, self.candidate) if v]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RolloutState:
        raw = dict(raw)
        raw["thresholds"] = Thresholds(**raw.get("thresholds", {}))
        return cls(**raw)


class RolloutConflict(RecsysError):
    """A write based on one revision of the state found the file at another: someone else changed it first."""

    def __init__(self, path: str | Path, expected: int, found: int):
        self.path, self.expected, self.found = Path(path), expected, found
        super().__init__(f"rollout state {path} is at revision {found}, but this change was based on revision "
                         f"{expected}; someone else changed it first. Nothing was written: read the state again "
                         "and redo the change on it")


def read(path: str | Path) -> RolloutState | None:
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return RolloutState.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise RecsysError(f"{path} is not a rollout state: {exc}") from exc


def revision(path: str | Path) -> int:
    """The file's revision now (0 when there is no state yet)."""
    state = read(path)
    return state.revision if state else 0


def events_path(path: str | Path) -> Path:
    return Path(f"{path}.events.jsonl")


def lock_path(path: str | Path) -> Path:
    """The lock file beside the state; it stays in place (removing it would let two writers lock two files)."""
    return Path(f"{path}.lock")


@contextmanager
def locked(path: str | Path, suffix: str = "") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<path>.lock<suffix>`` (blocking until it is free)."""
    lock = Path(f"{lock_path(path)}{suffix}")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def write(path: str | Path, state: RolloutState, reason: str, *, expect_revision: int | None,
          event: dict[str, Any] | None = None) -> RolloutState:
    """Replace the state with ``state`` (as revision + 1) and log the change, atomically with respect to every
    other writer.

    Args:
        path: the rollout state file.
        state: the new state (its ``revision``, ``updated_at`` and ``reason`` are set here).
        reason: why, recorded in the state and the events log.
        expect_revision: the revision the change was based on (0 = no state yet). None writes over whatever is
            there: only for a state that was not derived from the file.
        event: more fields for the events-log line.

    Returns:
        The state as written.

    Raises:
        RolloutConflict: the file is at another revision than ``expect_revision``; nothing was written.
    """
    path = Path(path)
    with locked(path):
        current = read(path)
        found = current.revision if current else 0
        if expect_revision is not None and found != expect_revision:
            raise RolloutConflict(path, expect_revision, found)
        new = replace(state, revision=found + 1, reason=reason,
                      updated_at=datetime.now(UTC).isoformat(timespec="milliseconds"))
        atomic_write_text(path, json.dumps(new.to_dict(), indent=2), fsync=True)
        record = {"at": new.updated_at, "revision": new.revision, "reason": reason, "production": new.production,
                  "candidate": new.candidate, "candidate_share": new.candidate_share, **(event or {})}
        with open(events_path(path), "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    return new


def history(path: str | Path) -> list[dict[str, Any]]:
    log = events_path(path)
    return [json.loads(line) for line in log.read_text().splitlines() if line] if log.is_file() else []
