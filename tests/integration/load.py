"""An open-loop load generator for the live app, driven by counts: ``n`` requests at ``rate`` per second, each
sent at its time whether or not earlier ones have answered; things happen *at request numbers* (``at``), not at
times, and a request can wait for an action to have finished (``after``), so a slow machine changes how long a
run takes, not what it tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass
class Outcome:
    index: int
    status: int | None  # None: no HTTP answer at all
    error: str | None = None  # the client's exception, if any
    body: dict = field(default_factory=dict)
    answered: float = 0.0  # time.monotonic() when the answer (or the error) came

    @property
    def kind(self) -> str:
        if self.status is None:
            return f"error {self.error}"
        if self.status != 200:
            return f"http {self.status}"
        return "degraded" if self.body.get("degraded") else "ok"


def run_load(url: str, n: int, rate: float, request: Callable[[int], tuple[str, dict]],
             at: dict[int, Callable[[], None]] | None = None, after: dict[int, int] | None = None,
             timeout_s: float = 30.0) -> list[Outcome]:
    """Send ``n`` requests (``request(i) -> (path, json body)``) at ``rate`` per second; call ``at[i]()`` (in a
    thread of its own) when request ``i`` is sent. ``after[j] = i``: request ``j`` is sent only once the action of
    request ``i`` has finished (the requests in flight go on; the rate resumes from there), so the requests from
    ``j`` on see its effect however long it took. Returns one `Outcome` per request, in order."""
    at, after = at or {}, after or {}
    if bad := {j: i for j, i in after.items() if i not in at or j <= i}:
        raise ValueError(f"after: {bad} must name the actions of earlier requests (at: {sorted(at)})")
    outcomes: list[Outcome | None] = [None] * n
    actions: dict[int, threading.Thread] = {}

    async def main() -> None:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=timeout_s, limits=limits) as client:
            async def one(i: int) -> None:
                path, body = request(i)
                try:
                    r = await client.post(path, json=body)
                except httpx.HTTPError as exc:
                    outcomes[i] = Outcome(i, None, type(exc).__name__, answered=time.monotonic())
                    return
                try:
                    payload = r.json()
                except ValueError:
                    payload = {}
                outcomes[i] = Outcome(i, r.status_code, body=payload if isinstance(payload, dict) else {},
                                      answered=time.monotonic())

            loop = asyncio.get_running_loop()
            start = loop.time()
            tasks = []
            for i in range(n):
                if i in after:
                    waiting = loop.time()
                    await asyncio.to_thread(actions[after[i]].join, 120)
                    start += loop.time() - waiting
                delay = start + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                if i in at:
                    actions[i] = threading.Thread(target=at[i], daemon=True)
                    actions[i].start()
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)

    asyncio.run(main())
    for action in actions.values():
        action.join(timeout=120)
    return [o for o in outcomes if o is not None]


def tally(outcomes: list[Outcome]) -> Counter:
    return Counter(o.kind for o in outcomes)
