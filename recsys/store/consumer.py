"""The feature consumer: reads the event stream (group ``features``) and applies each event to the live state.

At least once, counted once (`recsys.store.worker`): a batch is applied (each event side at most once:
`recsys.store.state`), the clock advanced, and only then acknowledged; the event ids make a second application of
an entry a no-op. Valkey killed mid-stream loses nothing it had acknowledged to a
writer with ``appendfsync always`` (with ``everysec``, up to its last second): the AOF restores the stream, the
state and the acknowledgements together, each script's effects whole.

A log without product views has each click applied as a view too (`recsys.data.features.with_implied_views`), as
the dataset the models were trained on has them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import polars as pl
import redis

from recsys.data.dataset import Dataset
from recsys.data.features import EVENT_ID, TS, with_implied_views
from recsys.data.reencoding import validated_source
from recsys.data.state_spec import StateSpec
from recsys.errors import RecsysError
from recsys.ids import text_code
from recsys.schema import FeatureSchema
from recsys.store.clock import StoreClock
from recsys.store.state import DEFAULT_NAMESPACE, StateLayout, StateWriter, StoreEvent
from recsys.store.stream import EventStream, store_event
from recsys.store.worker import Entries, StreamWorker

GROUP = "features"


@dataclass(frozen=True)
class LiveContext:
    """What applying events needs to know of the dataset serving ranks with."""

    layout: StateLayout
    categories: Mapping[int, str | None]  # item -> category name (the category shares)
    implied_views: bool

    @classmethod
    def of(cls, dataset: Dataset, schema: FeatureSchema, namespace: str = DEFAULT_NAMESPACE,
           dedupe_window_s: float = 600.0) -> LiveContext:
        items = dataset.online("items")
        categories = dict(zip(items["_item"].to_list(), items["_category"].to_list(), strict=True))
        return cls(StateLayout(StateSpec.of(schema), namespace, dedupe_window_s), categories,
                   bool(dataset.manifest.online.get("implied_views", False)))

    def events(self, events: Iterable[StoreEvent]) -> list[StoreEvent]:
        """``events`` and, for a log without views, a view at each click (the id `with_implied_views` gives it)."""
        out = []
        for e in events:
            out.append(e)
            if self.implied_views and e.event_type == "click":
                out.append(StoreEvent(text_code(f"view:{e.event_id}"), e.ts_us, e.user_id, e.item_id, "view"))
        return out


class FeatureConsumer(StreamWorker):
    """Applies each entry to the live state and advances the clock, then acknowledges."""

    group = GROUP

    def __init__(self, client: redis.Redis, context: LiveContext, name: str = "features-1", batch: int = 1_000,
                 block_ms: int = 500, claim_idle_s: float = 30.0):
        super().__init__(EventStream(client, context.layout.namespace), name, batch, block_ms, claim_idle_s)
        self.context = context
        self.writer = StateWriter(client, context.layout, context.categories)
        self.clock = StoreClock(client, context.layout.namespace)
        self.applied = 0

    def handle(self, entries: Entries) -> None:
        events = [store_event(fields) for _, fields in entries]
        if events:
            self.applied += self.writer.apply(self.context.events(events))
            self.clock.advance(max(e.ts_us for e in events))


def bootstrap(client: redis.Redis, context: LiveContext, dataset: Dataset, batch: int = 5_000,
              progress: bool = False) -> int:
    """Apply the events ``dataset`` was built from straight to the state (not through the stream: they are in the
    shop's export already, the sink must not write them again); the live features then start from the dataset's
    online tables' instant. Refused on a namespace bootstrapped before. Returns how many events."""
    from tqdm import tqdm

    meta = f"{context.layout.namespace}:meta"
    if (before := client.hget(meta, "bootstrapped_from")) is not None:
        raise RecsysError(f"the store's namespace {context.layout.namespace!r} was bootstrapped from dataset "
                          f"{before.decode()} already: applying a history twice would count it twice "
                          "(recsys store reset deletes the state first)")
    events = with_implied_views(pl.read_parquet(validated_source(dataset) / "events.parquet")).sort(TS, EVENT_ID)
    writer, clock = StateWriter(client, context.layout, context.categories), StoreClock(client,
                                                                                          context.layout.namespace)
    bar = tqdm(total=events.height, desc="bootstrap the store", unit="event", disable=not progress)
    for start in range(0, events.height, batch):
        rows = StoreEvent.rows(events.slice(start, batch))
        writer.apply(rows)
        clock.advance(max(e.ts_us for e in rows))
        bar.update(len(rows))
    bar.close()
    client.hset(meta, mapping={"bootstrapped_from": dataset.id,
                                                             "bootstrap_events": events.height})
    return events.height
