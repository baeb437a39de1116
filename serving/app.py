"""The Ray Serve application: an HTTP ingress (FastAPI) over a retriever deployment, ranking on Triton.

    POST /recommend  user -> online features -> retrieve N (query tower + ANN) -> filter -> rank (Triton) -> top k
    POST /feedback   impressions / clicks / purchases of served lists -> the event log (fsynced before the 2xx)
    GET  /healthz    the process answers
    GET  /readyz     the index, the features and Triton are ready (503 otherwise)
    GET  /metrics    Prometheus text: requests, errors, per-stage latency

Whatever happens behind it, /recommend answers: an unknown user gets popular items flagged ``cold_start``;
a Triton that is down or slower than ``rank_deadline_s`` gives the retrieval order flagged ``degraded``.
Bad requests get a 4xx naming the field and what was expected.

``serve run serving/config.yaml`` or ``recsys serve`` start it; `build_app` composes it with ``.bind()``.
(No ``from __future__ import annotations`` here: FastAPI must see the request models as classes through Serve's
ingress wrapper, or it takes them for query parameters.)
"""

import asyncio
import importlib
import logging
import time
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from recsys.eventlog.feedback import FeedbackLog, event_id_for
from recsys.eventlog.request_ids import RequestIds, request_key, variant_of
from recsys.eventlog.requests import RequestLog
from recsys.serving_config import ServingConfig, from_args
from serving.canary import Canary
from serving.metrics import Metrics
from serving.ranker import TritonRanker
from serving.retriever import Retriever

log = logging.getLogger(__name__)

INT64_MAX = 2**63 - 1
Id = Annotated[int, Field(ge=0, le=INT64_MAX)]
LIMITS = {"max_body_bytes": 65536}  # set by the ingress replica from its config; read by BodyLimit
ROUTES = ("/recommend", "/feedback", "/healthz", "/readyz", "/metrics")
STATE: dict[str, Any] = {}  # the replica's Metrics, for the counting middleware


# ---- request and response bodies -------------------------------------------------------------------
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Context(Strict):
    category: Annotated[str, Field(min_length=1, max_length=200)] | None = None  # cold start: popular in it


class RecommendRequest(Strict):
    user_id: Id
    k: Annotated[int, Field(ge=1, description="how many items (1 to the configured max_k)")] = 10
    context: Context | None = None
    exclude: list[Id] = Field(default_factory=list, description="item ids never to return")


class Scored(BaseModel):
    item_id: int
    score: float | None  # the ranker's click probability; None where the ranker was not used


class RecommendResponse(BaseModel):
    request_id: int
    user_id: int
    items: list[Scored]
    cold_start: bool
    degraded: bool
    reason: str | None  # why degraded (or cold start)
    variant: str  # which ranking model answered: production, or the candidate (canary / A-B)
    model_versions: dict[str, str]
    timings_ms: dict[str, float]


class FeedbackEvent(Strict):
    item_id: Id
    event_type: Literal["impression", "click", "purchase"]
    position: Annotated[int, Field(ge=0, le=10_000)] | None = None  # slot in the served list (impressions)
    timestamp: datetime | None = None  # default: when the event is received

    model_config = ConfigDict(extra="forbid", strict=False)  # timestamp may be ISO text


class FeedbackRequest(Strict):
    request_id: Id  # of the /recommend answer the events are about (it was issued to this user)
    user_id: Id
    session_id: Id | None = None  # default: the request id
    events: Annotated[list[FeedbackEvent], Field(min_length=1, max_length=1000)]


class FeedbackResponse(BaseModel):
    accepted: int
    log: str


# ---- the FastAPI app -------------------------------------------------------------------------------
api = FastAPI(title="recsys", description="Recommendations: retrieve (two-tower + ANN), filter, rank (DLRM on "
              "Triton). Feedback goes back into the event log.", version="1")


class BodyLimit:
    """Pure ASGI middleware: a body larger than ``LIMITS['max_body_bytes']`` gets 413 before any parsing."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = LIMITS["max_body_bytes"]
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await self._refuse(send, limit)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > limit:
                return await self._refuse(send, limit)
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(send, limit: int) -> None:
        body = JSONResponse({"error": "payload too large", "detail": f"request bodies are limited to {limit} bytes"},
                            status_code=413)
        await send({"type": "http.response.start", "status": 413, "headers": body.raw_headers})
        await send({"type": "http.response.body", "body": body.body})


api.add_middleware(BodyLimit)


@api.middleware("http")
async def _count(request: Request, call_next):
    """Every answer by route and status, 413s from BodyLimit included (this middleware is outside it)."""
    response = await call_next(request)
    if (metrics := STATE.get("metrics")) is not None:
        route = request.url.path if request.url.path in ROUTES else "other"
        metrics.requests.labels(route=route, status=str(response.status_code)).inc()
    return response


def _problem(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error.get("loc", ()))
    got = f" (got {error['input']!r})" if "input" in error and not isinstance(error["input"], dict | list) else ""
    return f"{where}: {error.get('msg', 'invalid')}{got}"


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [_problem(e) for e in exc.errors()]
    return JSONResponse({"error": "invalid request", "detail": problems}, status_code=422)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse({"error": "invalid request" if exc.status_code < 500 else "unavailable",
                         "detail": exc.detail}, status_code=exc.status_code)


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=128)
@serve.ingress(api)
class Ingress:
    def __init__(self, config: ServingConfig, retriever: DeploymentHandle):
        from recsys.data.dataset import Dataset
        from recsys.schema import load_schema
        from recsys.training.job import newest_dataset
        from serving.features import FeaturesByDataset, OnlineFeatures, model_inputs

        # this class reaches the replica pickled by value (with copies of the module's globals); the middleware
        # reads the module's own dicts, so set those
        module = importlib.import_module("serving.app")
        module.LIMITS["max_body_bytes"] = config.max_body_bytes
        self.config, self.retriever = config, retriever
        # Triton's gRPC client lives in the replica: Triton batches across requests itself, and a Ray hop to a
        # separate client deployment cost more CPU than the call (scripts/bench_serving.py)
        self.ranker = TritonRanker(config.triton_url, config.ranker_model, config.ranker_version,
                                   config.rank_deadline_s)
        self.canary = Canary(config.rollout_file, config.ranker_model, config.ranker_version)
        self._rollout_checked = time.monotonic()
        schema = load_schema()
        dataset = Dataset.open(config.dataset or newest_dataset(), schema)
        self.features = OnlineFeatures(dataset, schema, config.popular_items)
        self.ranking_features = FeaturesByDataset(self.features)  # each variant's model ranks with its dataset's
        self.query_specs = model_inputs(schema, "two_tower.user")
        self.ranking_specs = model_inputs(schema, "dlrm")
        self.log = FeedbackLog(config.event_log)
        self.requests = RequestLog(config.event_log)
        self.request_ids = RequestIds(request_key(config.event_log))
        self.metrics = module.STATE["metrics"] = Metrics()
        self.versions = {"dataset": dataset.id}

    def __del__(self):
        self.requests.flush()  # Serve deletes the replica's object when it stops it

    async def _retrieval_version(self) -> str:
        if "retrieval" not in self.versions:
            self.versions["retrieval"] = (await self.retriever.describe.remote())["version"]
        return self.versions["retrieval"]

    @api.post("/recommend", response_model=RecommendResponse)
    async def recommend(self, body: RecommendRequest) -> RecommendResponse:
        cfg, timings, start = self.config, {}, time.perf_counter()
        if body.k > cfg.max_k:
            raise HTTPException(422, [f"body.k: must be at most {cfg.max_k} (got {body.k})"])
        if len(body.exclude) > cfg.max_exclude:
            raise HTTPException(422, [f"body.exclude: at most {cfg.max_exclude} ids (got {len(body.exclude)})"])
        exclude, category = set(body.exclude), body.context.category if body.context else None
        versions = {"dataset": self.versions["dataset"]}
        scores: np.ndarray | None = None
        query: dict[str, np.ndarray] | None = None
        reason, degraded, variant = None, False, "production"

        def lap(stage: str, since: float) -> float:
            now = time.perf_counter()
            timings[stage] = round((now - since) * 1000, 3)
            self.metrics.stage(stage, now - since)
            return now

        t = start
        user = self.features.user(body.user_id)
        t = lap("features", t)
        if user is None:
            items = self.features.keep(None, self.features.popular_items(category), exclude)[: body.k]
            reason = "unknown user: popular items" + (f" in {category!r}" if category else "")
            self.metrics.cold_start.inc()
        else:
            try:
                query = self.features.query_inputs(user, self.query_specs)
                candidates = await asyncio.wait_for(self.retriever.retrieve.remote(query), cfg.retrieve_deadline_s)
                versions["retrieval"] = await self._retrieval_version()
            except Exception as exc:  # any failure of retrieval degrades to popularity
                candidates, degraded = self.features.popular_items(), True
                reason = f"retrieval failed ({type(exc).__name__}): popular items"
                self.metrics.errors.labels(stage="retrieve").inc()
            t = lap("retrieve", t)
            kept = self.features.keep(body.user_id, candidates, exclude)
            if len(kept) < body.k:  # most candidates bought or excluded: top up with popular items, ranked too
                seen = set(kept)
                extra = self.features.keep(body.user_id, self.features.popular_items(), exclude | seen)
                kept += extra[: body.k - len(kept)]
            t = lap("filter", t)
            items = kept[: body.k]
            if kept and not degraded:
                variant, ranked, outcome, ranking_dataset = await self._rank(body.user_id, kept)
                if ranked is not None:
                    versions["ranking"], versions["dataset"] = outcome, ranking_dataset
                    order = np.argsort(-ranked, kind="stable")[: body.k]
                    items, scores = [kept[i] for i in order], ranked[order]
                else:  # Triton down, slow or failing: the retrieval order
                    degraded, reason = True, f"{outcome}: retrieval order"
                t = lap("rank", t)
        if degraded:
            self.metrics.degraded.inc()
        timings["total"] = round((time.perf_counter() - start) * 1000, 3)
        self.metrics.stage("total", time.perf_counter() - start)
        scored = [Scored(item_id=i, score=None if scores is None else float(scores[n])) for n, i in enumerate(items)]
        request_id = self.request_ids.issue(body.user_id, variant)
        self.requests.add(request_id, body.user_id, variant, query, items, scores, user is None, degraded,
                          timings["total"])
        return RecommendResponse(request_id=request_id, user_id=body.user_id, items=scored, cold_start=user is None,
                                 degraded=degraded, reason=reason, variant=variant, model_versions=versions,
                                 timings_ms=timings)

    def _ranking_inputs(self, variant: str, user_id: int, items: list[int]):
        """(inputs, dataset id) encoded as ``variant``'s model was trained; None if its dataset lacks the user or an
        item."""
        return self.ranking_features.ranking_inputs(self.canary.state.datasets.get(variant), user_id, items,
                                                    self.ranking_specs)

    async def _rank(self, user_id: int, items: list[int]) -> tuple[str, np.ndarray | None, str, str]:
        """(variant, scores, "model:version", dataset id) with the user's variant; a failed candidate call is
        retried on production and counts toward the candidate's automatic rollback. (variant, None, why, "") when
        ranking failed."""
        now = time.monotonic()
        if now - self._rollout_checked >= self.config.rollout_poll_s:
            self._rollout_checked = now
            self.canary.refresh()
        variant, version = self.canary.variant(user_id)
        while True:
            if (encoded := self._ranking_inputs(variant, user_id, items)) is None:
                if variant == "candidate":  # the candidate's dataset is unusable or lacks the user: production
                    variant, version = "production", self.canary.state.production
                    continue
                return variant, None, f"no ranking features for user {user_id} in the {variant} model's dataset", ""
            inputs, dataset_id = encoded
            start = time.perf_counter()
            try:
                ranked, outcome = await asyncio.wait_for(self.ranker.rank(inputs, version),
                                                         self.config.rank_deadline_s)
                ok = True
            except Exception as exc:
                ranked, ok = None, False
                outcome = ("ranker slower than the deadline" if isinstance(exc, TimeoutError)
                           else f"ranker unavailable ({type(exc).__name__}: {str(exc)[:300]})")
                self.metrics.errors.labels(stage="rank").inc()
                self.metrics.variant_errors.labels(variant=variant).inc()
            seconds = time.perf_counter() - start
            self.metrics.variant_latency.labels(variant=variant).observe(seconds)
            if variant == "candidate" and (why := self.canary.record(ok, seconds * 1000)):
                self.canary.roll_back(why)
                self.metrics.rollbacks.inc()
            if ok or variant == "production":
                if ok:
                    self.metrics.variant.labels(variant=variant).inc()
                return variant, ranked, outcome, dataset_id
            variant, version = "production", self.canary.state.production

    @api.post("/feedback", response_model=FeedbackResponse)
    async def feedback(self, body: FeedbackRequest) -> FeedbackResponse:
        if not self.request_ids.issued_to(body.request_id, body.user_id):
            raise HTTPException(422, [f"body.request_id: {body.request_id} is not a request id this app issued to "
                                      f"user {body.user_id} (send the request_id of a /recommend answer)"])
        unknown = sorted({e.item_id for e in body.events if not self.features.known_item(e.item_id)})
        if unknown:
            raise HTTPException(422, [f"body.events: item ids not in the catalog: {unknown[:20]}"])
        rows = [{"timestamp": e.timestamp.isoformat() if e.timestamp else None, "user_id": body.user_id,
                 "item_id": e.item_id, "event_type": e.event_type,
                 "session_id": body.session_id if body.session_id is not None else body.request_id,
                 "request_id": body.request_id, "position": e.position} for e in body.events]
        for row in rows:
            row["event_id"] = event_id_for(body.request_id, row["item_id"], row["event_type"], row["position"],
                                           row["timestamp"])
        try:
            accepted, _ = await asyncio.to_thread(self.log.append, rows, variant_of(body.request_id))
        except OSError as exc:
            self.metrics.errors.labels(stage="feedback").inc()
            raise HTTPException(503, f"the event log could not be written ({exc}); nothing was accepted") from exc
        for e in body.events:
            if e.event_type == "purchase":
                self.features.add_purchase(body.user_id, e.item_id)
        for e in body.events:
            self.metrics.feedback.labels(variant=variant_of(body.request_id), event_type=e.event_type).inc()
        return FeedbackResponse(accepted=accepted, log=str(self.log.path))

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        timeout = self.config.ready_timeout_s
        checks = {"features": self.features.users.height > 0 and self.features.items.height > 0}
        for name, call in (("index", lambda: self.retriever.ready.remote()),
                           ("triton", lambda: self.ranker.ready(timeout))):
            try:
                checks[name] = bool(await asyncio.wait_for(call(), timeout + 1.0))
            except Exception:  # not ready
                checks[name] = False
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    @api.get("/metrics")
    async def metrics(self) -> Response:
        text, content_type = self.metrics.render()
        return Response(text, media_type=content_type)


def build_app(config: ServingConfig) -> serve.Application:
    """The application graph: the ingress (which calls Triton) over the retriever."""
    from recsys.schema import load_schema

    logging = {"enable_access_log": config.access_log}  # a log line per request per replica costs CPU
    retriever = Retriever.options(logging_config=logging).bind(config, load_schema().hash)
    return Ingress.options(logging_config=logging).bind(config, retriever)


def app_builder(args: dict[str, Any]) -> serve.Application:
    """For ``serve run`` / ``serve deploy``: ``import_path: serving.app:app_builder`` with ``args``."""
    return build_app(from_args(args))
