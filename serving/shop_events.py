"""``POST /events``: the shop's own product-page events (views, add-to-carts, purchases), as the live store and the
next dataset take them.

Each event is checked the way batch validation checks an exported one (`recsys.data.validate.event_row_problems`:
time not in the future nor before the shop opened, no event id twice in a request; an item outside the catalog is a
404, as for ``/feedback``) and a request with any bad event is refused whole, naming each (``body.events.<n>``:
why), so nothing of it is recorded.
A new user is fine: their first events are what makes them known.

An event's id is the client's ``event_id``, else one derived from the request's ``Idempotency-Key`` and the event's
place, else from what the event says (user, item, type and time), so a retry of the same request is counted once;
an event sent without a time is stamped on arrival, and sent again later it is another event.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import polars as pl
from pydantic import BaseModel, Field

from recsys.config import ValidationConfig
from recsys.data.validate import event_row_problems
from recsys.eventlog.feedback import event_id_for
from recsys.events import EVENTS
from recsys.ids import session_code
from serving.api import PROBLEMS, Id, IdText, Problem, Strict, Timestamp

UNAUTHORIZED = {401: {"model": Problem, "description": "no API key, or not one of the shop's (nothing written)"}}
EVENTS_PROBLEMS = {**PROBLEMS, **UNAUTHORIZED,
                   404: {"model": Problem, "description": "an item id is not in the catalog, or the app runs without "
                                                          "the live store (it takes no events)"},
                   503: {"model": Problem, "description": "the event stream could not be written (nothing was "
                                                          "recorded; send the same request again)"}}
EVENTS_SCOPE = "events"  # event_id_for's first part for /events (a request id for /feedback)
MAX_EVENTS = 250  # so that a request one event too long still fits the default 64 KiB body limit (a 422, not a 413)


class ShopEvent(Strict):
    user_id: Id
    item_id: Id
    event_type: Literal["view", "add_to_cart", "purchase"]
    timestamp: Timestamp | None = Field(default=None, description="when it happened, with its UTC offset "
                                        "(default: when it is received)")
    session_id: Id | None = Field(default=None, description="the shopper's visit (default: derived later from "
                                  "the gaps between their events)")
    event_id: IdText | None = Field(default=None, description="the shop's own id of this event (a decimal "
                                    "string): an event sent twice with the same id is counted once")


class EventsRequest(Strict):
    events: Annotated[list[ShopEvent], Field(min_length=1, max_length=MAX_EVENTS)]


class EventsResponse(BaseModel):
    accepted: int  # events of the request now on the stream
    log: str  # the stream they are on


def event_rows(body: EventsRequest, users: list[int], items: list[int], idempotency_key: str | None,
               now: datetime) -> list[dict]:
    """The request's events as event-log rows (EVENTS columns), ids coded (``users``, ``items``)."""
    rows = []
    for n, (e, user, item) in enumerate(zip(body.events, users, items, strict=True)):
        when = e.timestamp or now
        if e.event_id is not None:
            event_id = int(e.event_id)
        elif idempotency_key is not None:
            event_id = event_id_for(0, EVENTS_SCOPE, "key", idempotency_key, n)
        else:
            event_id = event_id_for(0, EVENTS_SCOPE, user, item, e.event_type, when.isoformat())
        rows.append({"event_id": event_id, "timestamp": when, "user_id": user, "item_id": item,
                     "event_type": e.event_type,
                     "session_id": None if e.session_id is None else session_code(e.session_id),
                     "request_id": None, "position": None})
    return rows


def problems(rows: list[dict], cfg: ValidationConfig, now: datetime, catalog: pl.Series) -> list[str]:
    """``body.events.<n>: <reasons>`` for each row batch validation would quarantine."""
    frame = pl.DataFrame(rows, schema=EVENTS.schema)
    return [f"body.events.{n}: {why} (item ids must be in the catalog, times within "
            f"{cfg.future_tolerance_minutes} minutes of now and after the shop opened, {cfg.shop_opened})"
            for n, why in enumerate(event_row_problems(frame, cfg, now, catalog)) if why]


def validation_config(dataset) -> ValidationConfig:
    """The validation settings the dataset's export was checked with (its validated report), else the defaults."""
    import json
    from dataclasses import fields
    from pathlib import Path

    try:
        report = Path(dataset.manifest.sources["validated"]["events"]["path"]).parent / "report.json"
        recorded = json.loads(report.read_text()).get("config", {})
    except (OSError, ValueError, KeyError, TypeError):
        return ValidationConfig()
    known = {f.name for f in fields(ValidationConfig)}
    return ValidationConfig(**{k: v for k, v in recorded.items() if k in known})
