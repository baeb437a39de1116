"""Prometheus metrics of an ingress replica (prometheus_client, served at ``GET /metrics``).

Each replica has its own registry; with several replicas a scraper sees one per scrape of the route, so on
a cluster scrape the replicas directly (or use Ray Serve's own metrics on the Ray metrics port).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._stages: dict[str, Histogram] = {}
        self.requests = Counter("recsys_http_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.errors = Counter("recsys_errors", "failures behind a request, by stage", ["stage"], registry=r)
        self.latency = Histogram("recsys_stage_latency_seconds", "time per /recommend stage", ["stage"],
                                 buckets=BUCKETS, registry=r)
        self.degraded = Counter("recsys_degraded_responses", "answers without ranking (or retrieval)", registry=r)
        self.stale_features = Counter("recsys_stale_feature_responses", "answers from snapshot features because "
                                      "the live store was down or slow", registry=r)
        self.cold_start = Counter("recsys_cold_start_responses", "answers for unknown users", registry=r)
        self.feedback = Counter("recsys_feedback_events", "events appended to the event log, by the variant that "
                                "served the list", ["variant", "event_type"], registry=r)
        self.shop_events = Counter("recsys_shop_events", "events POST /events put on the stream", ["event_type"],
                                   registry=r)
        self.variant = Counter("recsys_variant_requests", "ranked answers by variant", ["variant"], registry=r)
        self.variant_errors = Counter("recsys_variant_errors", "failed ranking calls by variant", ["variant"],
                                      registry=r)
        self.variant_latency = Histogram("recsys_variant_rank_latency_seconds", "ranking call time by variant",
                                         ["variant"], buckets=BUCKETS, registry=r)
        self.rollbacks = Counter("recsys_automatic_rollbacks", "candidates this replica rolled back", registry=r)
        self.request_log_dropped = Counter("recsys_request_log_dropped_lines", "answers the request log could not "
                                           "write (telemetry lost; the answers were served)", registry=r)

    def stage(self, name: str, seconds: float) -> None:
        if (child := self._stages.get(name)) is None:  # (a labels() lookup per observation costs a lock and a key)
            child = self._stages[name] = self.latency.labels(stage=name)
        child.observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class CountAnswers:
    """Pure ASGI middleware: every answer by route and status (``settings()["metrics"]``, once the replica has
    set it), 413s of the body limit included when it sits outside that middleware. (Starlette's
    ``@app.middleware("http")`` would cost a task group and a streamed copy of every answer.)"""

    def __init__(self, app, settings: Callable[[], Mapping[str, Any]], routes: tuple[str, ...]):
        self.app, self.settings, self.routes = app, settings, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or (metrics := self.settings().get("metrics")) is None:
            return await self.app(scope, receive, send)
        route = scope.get("path") if scope.get("path") in self.routes else "other"

        async def counted(message):
            if message["type"] == "http.response.start":
                metrics.requests.labels(route=route, status=str(message["status"])).inc()
            await send(message)

        return await self.app(scope, receive, counted)
