"""Simulated shoppers in the shop's own time, against an app that serves live features.

`recsys.retrain.simulate.Shoppers` visits "now": right for an app whose features are a snapshot, wrong for one that
reads them from the live store as of the newest event (``store.clock: events``), where a returning user's recency,
counts and history are what they did before. `ShopTraffic` plays the generator's own shop forward from a start time
as a discrete-event simulation: sessions arrive at the export's rate (Poisson), each user drawn by the generator's
activity weights; a session shows `requests_per_session` lists (each asked of the app) and has organic views, at the
generator's offsets; every shown item is fed back as an impression, clicked with the generator's click model on the
user's taste at that moment, and a click leads to a view, a view to an add-to-cart, an add-to-cart to a purchase,
each with the generator's chances and delays (`recsys.data.generate.ShopWorld`). Every event carries its time in the
shop's clock. Events wait in time order until the next list is asked for; then they are sent (``/feedback`` for a
list's impressions and clicks, ``/events`` for the rest), ``settle`` waits until the store has applied them and
moves the store's clock to the instant of the list (nothing else happened in between: the store knows every event up
to it), and the app answers as of that instant, as the offline builder computes an example at it.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import redis

from recsys.data.generate import SESSION_SECONDS, ShopWorld
from recsys.errors import RecsysError
from recsys.retrain.simulate import visit_weights
from recsys.store import consumer
from recsys.store.clock import StoreClock
from recsys.store.state import DEFAULT_NAMESPACE, from_us
from recsys.store.stream import EventStream

US = 1_000_000
EVENTS_PER_CALL = 250  # serving.shop_events.MAX_EVENTS


def live_store_settle(client: redis.Redis, namespace: str = DEFAULT_NAMESPACE, limit_s: float = 60.0
                      ) -> Callable[[int], None]:
    """`ShopTraffic`'s ``settle`` for a store on ``client``: until the feature consumer has applied every event on
    the stream, then the store's ``events`` clock moved on to the shop's clock."""
    stream, clock = EventStream(client), StoreClock(client, namespace)

    def settle(now_us: int) -> None:
        deadline = time.monotonic() + limit_s
        while not stream.caught_up(consumer.GROUP):
            if time.monotonic() > deadline:
                raise RecsysError(f"the feature consumer did not catch up with the stream within {limit_s:.0f} s")
            time.sleep(0.005)
        clock.advance(now_us)

    return settle


def sessions_per_day(export: str | Path) -> float:
    """Sessions a day in a shop export's events (distinct session ids over the days they span)."""
    frame = pl.scan_parquet(Path(export) / "events" / "*.parquet").select(
        pl.col("session_id").n_unique().alias("sessions"),
        ((pl.col("timestamp").max() - pl.col("timestamp").min()).dt.total_seconds() / 86400).alias("days"),
    ).collect().row(0, named=True)
    return frame["sessions"] / max(frame["days"], 1e-9)


@dataclass(order=True)
class _Due:
    at_us: int
    seq: int
    kind: str = field(compare=False)  # session request impression click view organic add_to_cart purchase
    user: int = field(compare=False)  # the generator's user index
    item: int = field(compare=False, default=-1)  # the generator's item index
    request_id: str | None = field(compare=False, default=None)
    position: int | None = field(compare=False, default=None)


@dataclass
class Answered:
    """One list the app answered: who asked, which variant answered, what was shown and clicked."""

    user_id: int
    variant: str
    impressions: int
    clicks: int
    expected_clicks: float  # the shown items' true click probabilities summed


class ShopTraffic:
    def __init__(self, world: ShopWorld, client: httpx.Client, start_s: int, sessions_per_day: float, *,
                 settle: Callable[[int], object] = lambda now_us: None, headers: dict[str, str] | None = None,
                 k: int = 10, seed: int = 0, known_users: set[int] | None = None, shop_events: bool = True):
        """``client`` talks to the app; ``headers`` go with every write (the shop's API key); ``settle(now_us)``
        returns once the store has applied every event sent and reads features as of ``now_us`` (microseconds since
        the epoch), e.g. `live_store_settle`. Without ``shop_events`` the views, add-to-carts and purchases still
        happen but are not sent (an app on snapshot features takes no ``/events``)."""
        self.world, self.client, self.k, self.settle, self.shop_events = world, client, k, settle, shop_events
        self.headers = headers or {}
        self.rng = np.random.default_rng(seed)
        self.weights = visit_weights(world, known_users)
        self.mean_gap_us = 86400 * US / sessions_per_day
        self.now_us = int(start_s) * US
        self._seq = itertools.count()
        self._due: list[_Due] = []
        self._pending: list[_Due] = []  # happened, not yet sent
        self._schedule("session", self.now_us, -1)

    def _schedule(self, kind: str, at_us: int, user: int, **what) -> None:
        heapq.heappush(self._due, _Due(int(at_us), next(self._seq), kind, user, **what))

    def run(self, requests: int) -> list[Answered]:
        """Play the shop forward until the app has answered ``requests`` lists."""
        answered: list[Answered] = []
        while len(answered) < requests:
            due = heapq.heappop(self._due)
            self.now_us = due.at_us
            if due.kind == "session":
                self._start_session()
            elif due.kind == "request":
                self._send()
                answered.append(self._ask(due))
            else:
                self._happen(due)
        self._send()
        return answered

    def _start_session(self) -> None:
        self._schedule("session", self.now_us + self.rng.exponential(self.mean_gap_us), -1)
        cfg = self.world.cfg
        user = int(self.rng.choice(len(self.weights), p=self.weights))
        for kind, mean in (("request", cfg.requests_per_session), ("organic", cfg.organic_views_per_session)):
            for offset in self.rng.integers(0, SESSION_SECONDS, self.rng.poisson(mean)):
                self._schedule(kind, self.now_us + int(offset) * US, user)

    def _affinity(self, user: int, items: np.ndarray) -> np.ndarray:
        return self.world.affinity(np.full(len(items), user), items, np.full(len(items), self.now_us // US))

    def _ask(self, due: _Due) -> Answered:
        """The app's list for the user now: its impressions happen as it renders, its clicks are scheduled as the
        generator times them."""
        self.settle(self.now_us)
        user_id = self._user_id(due.user)
        r = self.client.post("/recommend", json={"user_id": user_id, "k": self.k})
        if r.status_code != 200:
            raise RecsysError(f"/recommend answered {r.status_code}: {r.text[:300]}")
        answer = r.json()
        items = np.array([s["item_id"] for s in answer["items"]], dtype=np.int64) - 1
        positions = np.arange(len(items))
        probability = self.world.click_prob(self._affinity(due.user, items), items, positions)
        clicked = self.rng.random(len(items)) < probability
        for position, item, click in zip(positions, items, clicked, strict=True):
            shown = self.now_us + int(position) * 1000  # the list renders top to bottom (sent with what follows)
            what = {"item": int(item), "request_id": answer["request_id"], "position": int(position)}
            self._pending.append(_Due(shown, next(self._seq), "impression", due.user, **what))
            if click:
                self._schedule("click", shown + int(self.rng.integers(1, 60)) * US, due.user, **what)
        return Answered(user_id, answer["variant"], len(items), int(clicked.sum()), float(probability.sum()))

    def _happen(self, due: _Due) -> None:
        """An event at its time: kept to be sent, and what follows from it scheduled."""
        if due.kind == "organic":
            item = self.world.organic_views(self.rng, np.array([due.user]), np.array([self.now_us // US]))[0]
            due.kind, due.item = "view", int(item)
        self._pending.append(due)
        cfg = self.world.cfg
        if due.kind == "click":
            self._schedule("view", self.now_us + US, due.user, item=due.item)
        elif due.kind == "view" and self.rng.random() < self.world.cart_prob(self._affinity(due.user, np.array(
                [due.item])))[0]:
            self._schedule("add_to_cart", self.now_us + int(self.rng.integers(5, 300)) * US, due.user, item=due.item)
        elif due.kind == "add_to_cart" and self.rng.random() < cfg.purchase_prob:
            self._schedule("purchase", self.now_us + int(self.rng.integers(10, 600)) * US, due.user, item=due.item)

    def _send(self) -> None:
        """What happened since the last list, sent in time order: a list's impressions and clicks to /feedback,
        the shop's own events to /events."""
        pending, self._pending = self._pending, []
        feedback: dict[str, list[_Due]] = {}
        shop = []
        for due in pending:
            (feedback.setdefault(due.request_id, []) if due.request_id else shop).append(due)
        for request_id, events in feedback.items():
            self._post("/feedback", {
                "request_id": request_id, "user_id": self._user_id(events[0].user),
                "events": [{"item_id": e.item + 1, "event_type": e.kind, "position": e.position,
                            "timestamp": from_us(e.at_us).isoformat()} for e in events]})
        for start in range(0, len(shop) if self.shop_events else 0, EVENTS_PER_CALL):
            self._post("/events", {"events": [
                {"user_id": self._user_id(e.user), "item_id": e.item + 1, "event_type": e.kind,
                 "timestamp": from_us(e.at_us).isoformat()} for e in shop[start:start + EVENTS_PER_CALL]]})

    def _user_id(self, user: int) -> int:
        return int(self.world.user_id(np.array([user]))[0])

    def _post(self, path: str, body: dict) -> None:
        r = self.client.post(path, json=body, headers=self.headers)
        if r.status_code != 200:
            raise RecsysError(f"{path} answered {r.status_code}: {r.text[:300]}")
