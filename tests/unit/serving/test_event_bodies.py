"""What /feedback and /events bodies accept: times as ISO 8601 text with an offset (strict models otherwise), and
/events rows checked with batch validation's own row checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from pydantic import ValidationError

from recsys.config import ValidationConfig
from serving.api import FeedbackEvent
from serving.shop_events import EventsRequest, event_rows, problems

NOW = datetime(2026, 9, 20, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("model", ["feedback", "events"])
def test_times_are_iso_text_with_an_offset(model):
    def parse(ts):
        if model == "feedback":
            return FeedbackEvent.model_validate({"item_id": 1, "event_type": "click", "timestamp": ts}).timestamp
        body = {"events": [{"user_id": 1, "item_id": 1, "event_type": "view", "timestamp": ts}]}
        return EventsRequest.model_validate(body).events[0].timestamp

    assert parse("2026-09-14T10:02:11Z") == datetime(2026, 9, 14, 10, 2, 11, tzinfo=UTC)
    assert parse("2026-09-14T12:02:11+02:00") == datetime(2026, 9, 14, 10, 2, 11, tzinfo=UTC)
    for bad, why in (("2026-09-14T10:02:11", "timezone"), (1757844131, "ISO 8601 string"), ("soon", "datetime")):
        with pytest.raises(ValidationError, match=why):
            parse(bad)


def test_events_rows_get_stable_ids_and_batch_validations_reasons():
    body = EventsRequest.model_validate({"events": [
        {"user_id": 1, "item_id": 10, "event_type": "view", "timestamp": "2026-09-20T11:00:00Z"},
        {"user_id": 1, "item_id": 99, "event_type": "view"},
        {"user_id": 2, "item_id": 10, "event_type": "purchase", "timestamp": "2026-09-21T12:00:00Z"},
        {"user_id": 2, "item_id": 10, "event_type": "view", "timestamp": "2019-01-01T00:00:00Z",
         "event_id": "77"}]})
    rows = event_rows(body, [1, 1, 2, 2], [10, 99, 10, 10], None, NOW)
    assert [r["timestamp"] for r in rows[:2]] == [datetime(2026, 9, 20, 11, tzinfo=UTC), NOW]  # none sent: now
    assert rows[3]["event_id"] == 77 and len({r["event_id"] for r in rows}) == 4
    assert [r["event_id"] for r in event_rows(body, [1, 1, 2, 2], [10, 99, 10, 10], None, NOW)] == \
        [r["event_id"] for r in rows]  # a retry: the same ids
    keyed = event_rows(body, [1, 1, 2, 2], [10, 99, 10, 10], "order-1", NOW + timedelta(seconds=5))
    assert keyed[1]["event_id"] == event_rows(body, [1, 1, 2, 2], [10, 99, 10, 10], "order-1", NOW)[1]["event_id"]
    found = problems(rows, ValidationConfig(shop_opened="2020-01-01"), NOW, pl.Series([10], dtype=pl.Int64))
    assert [p.split(":")[0] for p in found] == ["body.events.1", "body.events.2", "body.events.3"]
    assert "unknown item_id" in found[0] and "timestamp in the future" in found[1]
    assert "timestamp before the shop opened" in found[2]
