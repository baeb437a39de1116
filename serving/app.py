"""The Ray Serve application: an HTTP ingress (FastAPI) that retrieves itself and ranks on Triton.

    POST /recommend  user -> online features -> retrieve N (query tower + ANN) -> filter -> rank (Triton) -> top k
    POST /feedback   impressions / clicks / purchases of served lists -> the event log (fsynced before the 2xx)
    GET  /healthz    the process answers
    GET  /readyz     the index, the features, Triton and the model versions the rollout names are ready
    GET  /metrics    Prometheus text: requests, errors, per-stage latency

Whatever happens behind it, /recommend answers: an unknown user gets popular items flagged ``cold_start``;
a Triton that is down or slower than ``rank_deadline_s`` gives the retrieval order flagged ``degraded``. A shop
whose log has no impressions has no ranker to train: with ``ranker_model: ""`` the retrieval order is the answer
(scored by the two towers) and Triton is neither called nor awaited.
Bad requests get a 4xx naming the field and what was expected (the body is read as JSON whatever its declared
content type, so ``curl -d '{...}'`` works). Request ids travel as decimal strings: they exceed 2**53.

``serve run serving/config.yaml`` or ``recsys serve`` start it; `build_app` composes it with ``.bind()``.
(No ``from __future__ import annotations`` here: FastAPI must see the request models as classes through Serve's
ingress wrapper, or it takes them for query parameters.)
"""

import asyncio
import importlib
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from recsys.eventlog.feedback import FEEDBACK_GLOB
from recsys.eventlog.jsonl import JsonlTail
from recsys.eventlog.request_ids import RequestIds, request_key, variant_of
from recsys.eventlog.requests import RequestLog
from recsys.ids import MAPPED_IDS, IdError, IdMap, export_id_maps, session_code
from recsys.serving_config import ServingConfig, from_args
from recsys.store.state import UserState
from serving.api import (
    DESCRIPTION,
    FEEDBACK_PROBLEMS,
    PROBLEMS,
    TITLE,
    VERSION,
    FeedbackRequest,
    FeedbackResponse,
    Problem,
    Readiness,
    RecommendRequest,
    RecommendResponse,
    Scored,
    event_ids,
    problems,
    spec,
    wire,
)
from serving.canary import Canary
from serving.datasets import DatasetUnavailable
from serving.live_source import LiveSource
from serving.metrics import CountAnswers, Metrics
from serving.ranker import Ranking, TritonRanker
from serving.request_body import RequestBody
from serving.retriever import Retrieval
from serving.shop_events import EVENTS_PROBLEMS, EventsRequest, EventsResponse, event_rows
from serving.writes import AUTH_HEADER, EventWrites

log = logging.getLogger(__name__)

ROUTES = ("/recommend", "/feedback", "/events", "/healthz", "/readyz", "/metrics")
REPLICA: dict[str, Any] = {"max_body_bytes": 65536, "metrics": None}  # set by the ingress replica (see Ingress)


def replica_settings() -> dict[str, Any]:
    """The module's own `REPLICA` (Serve ships the FastAPI app to the replica by value, with copies of the
    objects it holds; a module-level function travels by reference and reads the replica's real module)."""
    return REPLICA


# ---- the FastAPI app -------------------------------------------------------------------------------
# the spec and its page are routes of the replica: the spec carries the limits of the replica's config
api = FastAPI(title=TITLE, description=DESCRIPTION, version=VERSION, openapi_url=None, docs_url=None, redoc_url=None)
api.add_middleware(RequestBody, settings=replica_settings, json_routes=("/recommend", "/feedback", "/events"))
api.add_middleware(CountAnswers, settings=replica_settings, routes=ROUTES)  # (outside RequestBody: its 413s too)


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(Problem(error="invalid request", detail=problems(exc.errors())).model_dump(),
                        status_code=422)


@api.exception_handler(StarletteHTTPException)  # FastAPI's own and Starlette's (an unreadable body: 400)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(Problem(error="invalid request" if exc.status_code < 500 else "unavailable",
                                detail=exc.detail).model_dump(), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=128)
@serve.ingress(api)
class Ingress:
    def __init__(self, config: ServingConfig):
        from recsys.data.dataset import Dataset
        from recsys.online.features import OnlineFeatures, model_inputs
        from recsys.schema import load_schema
        from recsys.training.job import newest_dataset
        from serving.datasets import FeaturesByDataset

        # this class reaches the replica pickled by value (with copies of the module's globals); the middleware
        # reads the module's own REPLICA, so set that one
        replica = importlib.import_module("serving.app").REPLICA
        self.config = config
        schema = load_schema()
        # the query tower and the item index live in the replica too (`serving.retriever`): a Ray hop to a
        # retriever deployment cost more CPU per request than the search itself (scripts/bench_serving.py)
        self.retriever = Retrieval(config, schema.hash)
        # Triton's gRPC client lives in the replica: Triton batches across requests itself, and a Ray hop to a
        # separate client deployment cost more CPU than the call (scripts/bench_serving.py)
        self.ranker = TritonRanker(config.triton_url, config.ranker_model, config.ranker_version,
                                   config.rank_deadline_s) if config.ranker_model else None
        self.canary = Canary(config.rollout_file, config.ranker_model, config.ranker_version)
        self._rollout_checked = time.monotonic()
        dataset = Dataset.open(config.dataset or newest_dataset(), schema)
        self.features = OnlineFeatures(dataset, schema, config.popular_items)
        self.ranking_features = FeaturesByDataset(self.features)  # each variant's model ranks with its dataset's
        self.ranking_features.keep_only(self.canary.state.datasets.values())
        self.live = LiveSource(config.store, self.features) if config.store.enabled else None
        self.query_specs = model_inputs(schema, "two_tower.user")
        self.ranking_specs = model_inputs(schema, "dlrm")
        self.metrics = Metrics()
        self.requests = RequestLog(config.event_log, on_drop=self.metrics.request_log_dropped.inc)
        self.request_ids = RequestIds(request_key(config.event_log))
        self.writes = EventWrites(config, dataset, list(self.features._item_index), self.live, self.metrics)
        # purchases fed back to any replica (and before a restart): followed in the shared feedback log
        self._feedback = JsonlTail(Path(config.event_log), FEEDBACK_GLOB)
        self._follow_purchases()
        self.versions = {"dataset": dataset.id}
        kinds = dataset.manifest.online.get("ids", {})  # the shop's ids: coded in, decoded out (`recsys.ids`)
        self.ids = {c: IdMap.read(dataset.path / "online", c, kinds.get(c)) for c in MAPPED_IDS}
        for column, exported in export_id_maps(config.retrieval_export).items():  # what the index may answer
            self.ids[column] = self.ids[column].merged(exported)
        if self.ranker is not None and not dataset.manifest.splits.get("ranking", {}).get("train", {}).get("rows"):
            log.warning("dataset %s has no ranking examples (a log without impressions): no ranker can have been "
                        "trained on it; serve the retrieval order with ranker_model=\"\"", dataset.id)
        self._spec: dict[str, Any] | None = None
        replica.update(max_body_bytes=config.max_body_bytes, metrics=self.metrics)

    def __del__(self):
        self.requests.flush()  # Serve deletes the replica's object when it stops it

    def _code(self, column: str, value: int | str, where: str) -> int:
        """The pipeline's id of a shop id a request sent; one that cannot be this shop's is a 422 naming ``where``."""
        try:
            return self.ids[column].encode(value)
        except IdError as exc:
            raise HTTPException(422, [f"{where}: {exc}"]) from None

    @api.post("/recommend", response_model=RecommendResponse, responses=PROBLEMS)
    async def recommend(self, body: RecommendRequest) -> RecommendResponse:
        cfg, timings, start = self.config, {}, time.perf_counter()
        if body.k > cfg.max_k:
            raise HTTPException(422, [f"body.k: must be at most {cfg.max_k} (got {body.k})"])
        if len(body.exclude) > cfg.max_exclude:
            raise HTTPException(422, [f"body.exclude: at most {cfg.max_exclude} ids (got {len(body.exclude)})"])
        user_id = self._code("user_id", body.user_id, "body.user_id")
        exclude = {self._code("item_id", i, "body.exclude") for i in body.exclude}
        category = body.context.category if body.context else None
        versions = {"dataset": self.versions["dataset"]}
        scores: np.ndarray | None = None
        query: dict[str, np.ndarray] | None = None
        ranked: tuple[str, dict[str, np.ndarray], np.ndarray] | None = None  # what the ranker was given (logged)
        reason, degraded, variant = None, False, "production"

        def lap(stage: str, since: float) -> float:
            now = time.perf_counter()
            timings[stage] = round((now - since) * 1000, 3)
            self.metrics.stage(stage, now - since)
            return now

        t = start
        self._follow()
        live_user = self.live.user(user_id) if self.live is not None else None
        stale = self.live is not None and live_user is None  # the store is down or slow: the snapshot
        user = self.features.user(user_id)
        known = self.live.base.known(live_user) if live_user is not None else user is not None
        t = lap("features", t)
        if not known:
            items = self.features.keep(None, self.features.popular_items(category), exclude)[: body.k]
            reason = "unknown user: popular items" + (f" in {category!r}" if category else "")
            self.metrics.cold_start.inc()
        else:
            try:
                query = (self.live.query_inputs(live_user, self.query_specs) if live_user is not None
                         else self.features.query_inputs(user, self.query_specs))
                found = await asyncio.wait_for(self.retriever.retrieve(query), cfg.retrieve_deadline_s)
                candidates = list(found)  # (without a ranker: id -> the retrieval score)
                versions["retrieval"] = self.retriever.version
            except Exception as exc:  # any failure of retrieval degrades to popularity
                candidates, degraded = self.features.popular_items(), True
                reason = f"retrieval failed ({type(exc).__name__}): popular items"
                self.metrics.errors.labels(stage="retrieve").inc()
            t = lap("retrieve", t)
            kept = self.features.to_rank(user_id, candidates, exclude, body.k,  # topped up with popular items
                                         live_user.bought if live_user is not None else None)
            t = lap("filter", t)
            items = kept[: body.k]
            if kept and not degraded and self.ranker is None:  # the retrieval order is the ranking
                if all(i in found for i in items):  # (not when popular items topped the list up)
                    scores = np.array([found[i] for i in items], dtype=np.float32)
            elif kept and not degraded:
                ranking = await self._rank(user_id, kept, live_user)
                variant, stale = ranking.variant, stale or ranking.stale_features
                if ranking.scores is not None:
                    versions["ranking"], versions["dataset"] = ranking.model, ranking.dataset
                    order = np.argsort(-ranking.scores, kind="stable")[: body.k]
                    items, scores = [kept[i] for i in order], ranking.scores[order]
                    ranked = ranking.dataset, ranking.inputs, order
                    reason = ranking.note
                else:  # Triton down, slow or failing: the retrieval order
                    degraded, reason = True, f"{ranking.note}: retrieval order"
                t = lap("rank", t)
        if degraded:
            self.metrics.degraded.inc()
        timings["total"] = round((time.perf_counter() - start) * 1000, 3)
        self.metrics.stage("total", time.perf_counter() - start)
        item_ids = self.ids["item_id"]
        scored = [Scored(item_id=wire(item_ids.decode(i)), score=None if scores is None else float(scores[n]))
                  for n, i in enumerate(items)]
        request_id = self.request_ids.issue(user_id, variant)
        if stale:
            self.metrics.stale_features.inc()
        self.requests.add(request_id, user_id, variant, query, items, scores, not known, degraded,
                          timings["total"], ranked)
        return RecommendResponse(request_id=str(request_id), user_id=wire(body.user_id), items=scored,
                                 cold_start=not known, degraded=degraded, stale_features=stale, reason=reason,
                                 variant=variant, model_versions=versions, timings_ms=timings)

    # ---- what other replicas and the rollout changed ------------------------------------------------
    def _follow(self) -> None:
        """At most every ``rollout_poll_s``: the rollout state, and purchases fed back to any replica."""
        now = time.monotonic()
        if now - self._rollout_checked >= self.config.rollout_poll_s:
            self._rollout_checked = now
            if self.canary.refresh():
                self.ranking_features.keep_only(self.canary.state.datasets.values())
            self._follow_purchases()

    def _follow_purchases(self) -> None:
        new, _ = self._feedback.poll()  # (torn lines are the monitor's to report)
        if new is not None and {"event_type", "user_id", "item_id"} <= set(new.columns):
            bought = new.filter(pl.col("event_type") == "purchase")
            for user_id, item_id in zip(bought["user_id"].to_list(), bought["item_id"].to_list(), strict=True):
                self.features.add_purchase(user_id, item_id)

    # ---- ranking ---------------------------------------------------------------------------------

    async def _rank(self, user_id: int, items: list[int], live_user: UserState | None) -> Ranking:
        """The user's variant ranks; a candidate that cannot (its dataset lacks the user, its call failed) hands
        over to production, and a failed candidate call counts toward its automatic rollback."""
        variant, version = self.canary.variant(user_id)
        if variant == "candidate":
            ranking = await self._rank_as("candidate", version, user_id, items, live_user)
            if ranking.scores is not None:
                return ranking
            fallback = await self._rank_as("production", self.canary.state.production, user_id, items, live_user)
            if ranking.note and fallback.scores is not None:  # say why the candidate did not rank
                fallback.note = f"candidate: {ranking.note}; ranked by production"
            return fallback
        return await self._rank_as("production", version, user_id, items, live_user)

    async def _rank_as(self, variant: str, version: str, user_id: int, items: list[int],
                       live_user: UserState | None) -> Ranking:
        try:
            encoded = self.ranking_features.ranking_inputs(self.canary.state.datasets.get(variant), user_id, items,
                                                           self.ranking_specs, self.live, live_user)
        except DatasetUnavailable as exc:
            self.metrics.errors.labels(stage="features").inc()
            return Ranking(variant, None, note=str(exc))
        if encoded is None:  # (normal for a candidate whose dataset lacks the user: no note)
            return Ranking(variant, None, note=None if variant == "candidate" else
                           f"no ranking features for user {user_id} in the {variant} model's dataset")
        inputs, dataset_id, stale = encoded
        start = time.perf_counter()
        ranking = await self.ranker.rank_within_deadline(inputs, version, self.config.rank_deadline_s)
        ranking.variant, ranking.dataset, ranking.stale_features, ranking.inputs = variant, dataset_id, stale, inputs
        seconds = time.perf_counter() - start
        self.metrics.variant_latency.labels(variant=variant).observe(seconds)
        if ranking.scores is None:
            self.metrics.errors.labels(stage="rank").inc()
            self.metrics.variant_errors.labels(variant=variant).inc()
        else:
            self.metrics.variant.labels(variant=variant).inc()
        why = self.canary.record(ranking.scores is not None, seconds * 1000) if variant == "candidate" else None
        if why and self.canary.roll_back(why) is not None:  # (None: another replica's rollback came first)
            self.metrics.rollbacks.inc()
        return ranking

    # ---- feedback and events ---------------------------------------------------------------------
    @api.post("/feedback", response_model=FeedbackResponse, responses=FEEDBACK_PROBLEMS)
    async def feedback(self, body: FeedbackRequest,
                       idempotency_key: str | None = Header(default=None, max_length=200, description=(
                           "a key of the client's choosing: a retry with the same key and body records nothing "
                           "twice (without one, events are identified by what they say)")),
                       authorization: str | None = Header(default=None, description=AUTH_HEADER)
                       ) -> FeedbackResponse:
        self.writes.authorize(authorization)
        request_id = int(body.request_id)
        user_id = self._code("user_id", body.user_id, "body.user_id")
        item_ids = [self._code("item_id", e.item_id, f"body.events.{n}.item_id") for n, e in enumerate(body.events)]
        if not self.request_ids.issued_to(request_id, user_id):
            raise HTTPException(404, [f"body.request_id: {body.request_id} is not a request id this app issued to "
                                      f"user {body.user_id} (send the request_id of a /recommend answer)"])
        unknown = sorted({str(e.item_id) for e, i in zip(body.events, item_ids, strict=True)
                          if not self.features.known_item(i)})
        if unknown:
            raise HTTPException(404, [f"body.events: item ids not in the catalog: {unknown[:20]}"])
        replay = self.writes.idempotency.replay(idempotency_key, body) if idempotency_key is not None else None
        if replay is not None:
            return replay
        rows = [{"event_id": event_id, "timestamp": e.timestamp,
                 "user_id": user_id, "item_id": item_id, "event_type": e.event_type,
                 "session_id": request_id if body.session_id is None else session_code(body.session_id),
                 "request_id": request_id, "position": e.position}
                for e, item_id, event_id in zip(body.events, item_ids, event_ids(request_id, body, idempotency_key),
                                                strict=True)]
        answer, _ = await self.writes.feedback(rows, variant_of(request_id), body, idempotency_key)
        for e, item_id in zip(body.events, item_ids, strict=True):
            if e.event_type == "purchase":
                self.features.add_purchase(user_id, item_id)
        return answer

    @api.post("/events", response_model=EventsResponse, responses=EVENTS_PROBLEMS)
    async def events(self, body: EventsRequest,
                     idempotency_key: str | None = Header(default=None, max_length=200, description=(
                         "a key of the client's choosing: a retry with the same key counts each event once")),
                     authorization: str | None = Header(default=None, description=AUTH_HEADER)
                     ) -> EventsResponse:
        """The shop's product-page events (view, add_to_cart, purchase) onto the event stream: the live features
        see them within a second, the next dataset is built from them."""
        self.writes.authorize(authorization)
        users = [self._code("user_id", e.user_id, f"body.events.{n}.user_id") for n, e in enumerate(body.events)]
        items = [self._code("item_id", e.item_id, f"body.events.{n}.item_id") for n, e in enumerate(body.events)]
        now = datetime.now(UTC)
        return await self.writes.shop_events(event_rows(body, users, items, idempotency_key, now), now)

    # ---- the spec ----------------------------------------------------------------------------------
    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self) -> JSONResponse:
        if self._spec is None:
            self._spec = spec(importlib.import_module("serving.app").api.routes, self.config,
                              text_ids=any(m.kind == "text" for m in self.ids.values()))
        return JSONResponse(self._spec)

    @api.get("/docs", include_in_schema=False)
    async def docs(self) -> Response:
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="openapi.json", title=f"{TITLE} - API")

    # ---- health ----------------------------------------------------------------------------------
    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "not ready"}})
    async def readyz(self) -> JSONResponse:
        timeout = self.config.ready_timeout_s
        self._follow()
        versions = self.canary.state.versions
        checks = {"features": self.features.users.height > 0 and self.features.items.height > 0,
                  "datasets": self._datasets_load()}
        checks["index"] = self.retriever.ready()
        calls = {}
        if self.ranker is not None:
            calls["triton"] = lambda: self.ranker.ready(timeout, versions)
        for name, call in calls.items():
            try:
                checks[name] = bool(await asyncio.wait_for(call(), timeout + 1.0))
            except Exception:  # not ready
                checks[name] = False
        ready = all(checks.values())
        body = Readiness(ready=ready, checks=checks, versions=versions or ["newest"],
                         rollout_revision=self.canary.state.revision)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)

    def _datasets_load(self) -> bool:
        """Every dataset the rollout names for a variant loads (a failure is logged with why)."""
        try:
            for path in self.canary.state.datasets.values():
                self.ranking_features.get(path)
        except DatasetUnavailable:
            return False
        return True

    @api.get("/metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition of this replica's metrics"}})
    async def metrics(self) -> Response:
        text, content_type = self.metrics.render()
        return Response(text, media_type=content_type)


def build_app(config: ServingConfig) -> serve.Application:
    """The application: the ingress replicas (each retrieves, and calls Triton to rank)."""
    logging = {"enable_access_log": config.access_log}  # a log line per request per replica costs CPU
    return Ingress.options(logging_config=logging, num_replicas=config.ingress_replicas).bind(config)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """For ``serve run`` / ``serve deploy``: ``import_path: serving.app:app_builder`` with ``args``."""
    return build_app(from_args(args))
