"""Where ``/feedback`` and ``/events`` write, once the request is known to be well formed and about real things:
the shop's API key checked (`serving.auth`), then the event stream when the app serves live features (all of a
request or none; the sink writes the event log from it), else this replica's event-log file (fsynced).
Either way a retry with the same event ids records nothing twice, and a failed write is a 503.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import polars as pl
from fastapi import HTTPException

from recsys.eventlog.feedback import FeedbackLog, FeedbackWriteError
from recsys.serving_config import ServingConfig
from serving.api import FeedbackRequest, FeedbackResponse, IdempotencyKeys
from serving.auth import ApiKeys, keys_required
from serving.live_source import FAILURES, LiveSource
from serving.metrics import Metrics
from serving.shop_events import EventsResponse, problems, validation_config

AUTH_HEADER = "'Bearer <API key>': required for writes when the app listens beyond loopback (or is configured so)"
NOT_WRITTEN = "nothing was recorded: send the same request again"


class EventWrites:
    def __init__(self, config: ServingConfig, dataset, catalog: list[int], live: LiveSource | None,
                 metrics: Metrics):
        self.keys = ApiKeys(config.api_keys_file, keys_required(config.require_api_key, config.host))
        self.log = FeedbackLog(config.event_log)
        self.live, self.metrics = live, metrics
        self.idempotency = IdempotencyKeys()
        self.validation = validation_config(dataset)
        self.catalog = pl.Series(sorted(catalog), dtype=pl.Int64)
        self._catalog = set(catalog)

    def catalog_has(self, item_id: int) -> bool:
        return item_id in self._catalog

    def authorize(self, authorization: str | None) -> None:
        """401 (nothing written) unless the request carries one of the shop's API keys."""
        if not self.keys.allows(authorization):
            self.metrics.errors.labels(stage="auth").inc()
            raise HTTPException(401, "writes need the shop's API key: send 'Authorization: Bearer <key>' with a key "
                                     "from the app's api_keys_file or $RECSYS_API_KEYS",
                                headers={"WWW-Authenticate": "Bearer"})

    async def _publish(self, rows: list[dict], stage: str) -> None:
        try:
            await asyncio.to_thread(self.live.events.publish, rows)
        except FAILURES as exc:
            self.metrics.errors.labels(stage=stage).inc()
            raise HTTPException(503, f"the event stream could not be written ({type(exc).__name__}: {exc}); "
                                     f"{NOT_WRITTEN}") from exc

    async def feedback(self, rows: list[dict], variant: str, body: FeedbackRequest,
                       idempotency_key: str | None) -> tuple[FeedbackResponse, list[dict]]:
        """(the answer, the events written now) for a /feedback request's rows (EVENTS columns, ids set)."""
        if self.live is not None:
            now = datetime.now(UTC)
            for row in rows:
                row["timestamp"], row["variant"] = row["timestamp"] or now, variant
            await self._publish(rows, "feedback")
            written, answer = rows, FeedbackResponse(accepted=len(rows), duplicates=0, log=self.live.events.key)
        else:
            for row in rows:
                row["timestamp"] = row["timestamp"].isoformat() if row["timestamp"] else None
            try:
                written = await asyncio.to_thread(self.log.append, rows, variant)
            except FeedbackWriteError as exc:
                self.metrics.errors.labels(stage="feedback").inc()
                raise HTTPException(503, f"the event log could not be written ({exc}); some of these events may "
                                         "have been recorded: send the same request again (same body, same "
                                         "Idempotency-Key if you used one): an event is recorded once, by its "
                                         "event_id") from exc
            answer = FeedbackResponse(accepted=len(rows), duplicates=len(rows) - len(written), log=str(self.log.path))
        for row in written:
            self.metrics.feedback.labels(variant=variant, event_type=row["event_type"]).inc()
        if idempotency_key is not None:
            self.idempotency.remember(idempotency_key, body, answer)
        return answer, written

    async def shop_events(self, rows: list[dict], now: datetime) -> EventsResponse:
        """A /events request's rows checked as batch validation checks them (422 naming each bad one), then
        published."""
        if self.live is None:  # (not in this app's OpenAPI spec either)
            raise HTTPException(404, "this app takes no /events: it runs without the live store (serving config "
                                     "store.enabled: false); send the events with the shop's export")
        unknown = sorted({str(r["item_id"]) for r in rows if not self.catalog_has(r["item_id"])})
        if unknown:  # well formed, about something that does not exist (as /feedback answers it)
            raise HTTPException(404, [f"body.events: item ids not in the catalog: {unknown[:20]}"])
        bad = problems(rows, self.validation, now, self.catalog)
        if bad:
            raise HTTPException(422, bad)
        await self._publish(rows, "events")
        for row in rows:
            self.metrics.shop_events.labels(event_type=row["event_type"]).inc()
        return EventsResponse(accepted=len(rows), log=self.live.events.key)
