"""Aliases (``production``, ``candidate``) and their history, kept in the MLflow store itself.

Every move is a registered-model tag ``recsys.alias_event.<ns since epoch, 20 digits>`` whose value is the
event as JSON, so "who moved production, when, why, from which version" and "what served production at
time T" are answered from the store alone, whichever machine moved the alias.
"""

from __future__ import annotations

import getpass
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from recsys.errors import RecsysError
from recsys.registry.store import check_task, client, missing

ALIASES = ("production", "candidate")
EVENT_PREFIX = "recsys.alias_event."
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class AliasEvent:
    """One alias move."""

    task: str
    alias: str
    action: str  # promote | rollback | withdraw
    from_version: int | None  # what the alias pointed at before (None: nothing)
    to_version: int | None  # None: the alias was withdrawn (a rolled-back candidate)
    who: str
    when: str  # UTC, ISO 8601 with microseconds (…Z)
    reason: str
    checks: list[dict[str, Any]] = field(default_factory=list)  # the gate's checks: name, passed, detail
    comparison: dict[str, Any] | None = None  # production's metric comparison (values, dataset, how measured)
    forced: str | None = None  # the --force reason that overrode failed checks
    key: str = ""  # the tag holding it

    @property
    def timestamp_ns(self) -> int:
        return int(self.key[len(EVENT_PREFIX):])


def _iso(ns: int) -> str:
    moment = EPOCH + timedelta(microseconds=ns // 1000)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def check_alias(alias: str) -> str:
    if alias not in ALIASES:
        raise RecsysError(f"unknown alias {alias!r}; expected one of {', '.join(ALIASES)}")
    return alias


def record_move(task: str, alias: str, version: int | None, action: str, reason: str = "", who: str | None = None,
                checks: list[dict[str, Any]] | None = None, comparison: dict[str, Any] | None = None,
                forced: str | None = None, registry: str | None = None) -> AliasEvent:
    """Point ``alias`` at ``version`` (None: remove the alias) and record the move as an event (no checks here:
    see `gate`)."""
    check_task(task)
    check_alias(alias)
    mlflow = client(registry)
    before = current(task, alias, registry)
    ns = time.time_ns() // 1000 * 1000  # microseconds, as `when` shows it
    event = AliasEvent(task=task, alias=alias, action=action, from_version=before,
                       to_version=None if version is None else int(version),
                       who=who or getpass.getuser(), reason=reason or "",
                       when=_iso(ns),
                       checks=list(checks or []), comparison=comparison, forced=forced, key=f"{EVENT_PREFIX}{ns:020d}")
    if version is None:
        mlflow.delete_registered_model_alias(task, alias)
    else:
        mlflow.set_registered_model_alias(task, alias, str(int(version)))
    body = {k: v for k, v in asdict(event).items() if k not in ("task", "key")}
    mlflow.set_registered_model_tag(task, event.key, json.dumps(body, sort_keys=True))
    return event


def current(task: str, alias: str, registry: str | None = None) -> int | None:
    """The version ``alias`` points at now, or None."""
    try:
        model = client(registry).get_registered_model(task)
    except Exception as exc:
        if missing(exc):
            return None
        raise
    version = (model.aliases or {}).get(alias)
    return int(version) if version is not None else None


def history(task: str, registry: str | None = None) -> list[AliasEvent]:
    """Every alias move of ``task``'s model, oldest first."""
    check_task(task)
    try:
        tags = client(registry).get_registered_model(task).tags or {}
    except Exception as exc:
        if missing(exc):
            return []
        raise
    events = []
    for key in sorted(k for k in tags if k.startswith(EVENT_PREFIX)):
        body = json.loads(tags[key])
        events.append(AliasEvent(task=task, key=key, **body))
    return events


def _as_ns(when: datetime | str) -> int:
    if isinstance(when, str):
        try:
            when = datetime.fromisoformat(when.replace("Z", "+00:00"))
        except ValueError:
            raise RecsysError(f"time {when!r} is not ISO 8601 (e.g. 2026-11-27T16:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # a time without a zone is UTC, like every recorded one
    delta = when - EPOCH  # exact integer arithmetic: a float timestamp loses the microseconds
    return ((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds) * 1000


def production_at(task: str, when: datetime | str, registry: str | None = None) -> int | None:
    """The version that was ``production`` at ``when`` (None if nothing was yet)."""
    limit = _as_ns(when)
    version = None
    for event in history(task, registry):
        if event.alias == "production" and event.timestamp_ns <= limit:
            version = event.to_version
    return version


def production_lineage(events: list[AliasEvent]) -> list[int]:
    """Production versions as a stack: a promotion pushes, a rollback pops back to the one before."""
    stack: list[int] = []
    for event in events:
        if event.alias != "production":
            continue
        if event.action == "rollback" and stack:
            stack.pop()
            if not stack or stack[-1] != event.to_version:
                stack.append(event.to_version)
        else:
            stack.append(event.to_version)
    return stack
