"""The loop's memory, ``<work_dir>/state.json``: the cycle in progress with its finished steps, and the finished
cycles. Written atomically (and fsynced) after every step, so a loop killed at any point continues where it
stopped."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError
from recsys.io import atomic_write_text


def timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class LoopState:
    """``<work_dir>/state.json``: the cycle in progress (its finished steps) and the finished cycles."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {"current": None, "cycles": [], "triggers_seen": 0}
        if path.is_file():
            try:
                self.data = json.loads(path.read_text())
            except ValueError as exc:
                raise RecsysError(f"{path} is not a loop state (fix or remove it): {exc}") from exc

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=2, default=str), fsync=True)

    @property
    def current(self) -> dict[str, Any] | None:
        return self.data["current"]

    def done(self, step: str) -> dict[str, Any] | None:
        return (self.current or {}).get("steps", {}).get(step)

    def finish_step(self, step: str, result: dict[str, Any]) -> dict[str, Any]:
        assert self.current is not None
        self.current["steps"][step] = {"finished_at": timestamp(), **result}
        self.save()
        return self.current["steps"][step]

    def end_cycle(self, outcome: str, detail: str) -> dict[str, Any]:
        cycle = self.current
        assert cycle is not None
        cycle |= {"outcome": outcome, "detail": detail, "ended_at": timestamp()}
        self.data["cycles"].append(cycle)
        self.data["current"] = None
        self.save()
        return cycle
