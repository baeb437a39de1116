"""The app's HTTP contract: request and response bodies (what the OpenAPI spec shows), the error body every 4xx and
5xx carries, how fed-back events are identified, and the replay of a /feedback request sent again with its
``Idempotency-Key``.

Ids that can exceed 2**53 travel as decimal strings: ``request_id`` (62 bits) and a client's own ``event_id``.
JavaScript's numbers hold integers exactly only up to 2**53, so a browser would round them. A shop's user and item
ids (int64) may be sent as JSON numbers up to 2**53 - 1 or as decimal strings up to 2**63 - 1; answers give them
back as numbers up to 2**53 - 1 and as strings above.
"""

import hashlib
import json
from collections import OrderedDict
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from recsys.eventlog.feedback import event_id_for

INT64_MAX = 2**63 - 1
EXACT_IN_JSON = 2**53 - 1  # the largest integer every JSON reader (JavaScript's numbers) holds exactly


def _int64(text: str) -> str:
    if int(text) > INT64_MAX:
        raise ValueError(f"must be at most {INT64_MAX} (a positive int64)")
    return text


IdText = Annotated[str, Field(pattern=r"^[0-9]{1,19}$", examples=["4803154931285127168"]),
                   AfterValidator(_int64)]


def _integral(value: Any) -> Any:
    """JSON has one number type: 7.0 is the integer 7 (as JSON Schema says), 7.5 is not an integer."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def json_int(**bounds: Any) -> Any:
    """An integer within ``bounds`` (pydantic `Field` constraints), sent as 7 or 7.0; never "7" (strict models).
    (The constraints come before the conversion, so that the JSON schema shows them as minimum / maximum.)"""
    return Annotated[int, Field(**bounds), BeforeValidator(_integral)]


# a user, item or session id as the shop has it: a JSON number up to 2**53 - 1, or a string: a decimal (integer ids
# up to 2**63 - 1) or the shop's own text id (an SKU, a UUID); the app codes it as the dataset did (`recsys.ids`)
ShopIdText = Annotated[str, Field(min_length=1, max_length=200, pattern=r"\S", examples=["SKU-0042"])]
Id = json_int(ge=0, le=EXACT_IN_JSON) | ShopIdText
WireId = int | str  # an id in an answer: `wire`
# an ISO 8601 time with its offset ("2026-09-14T10:02:11Z"); read from JSON text even in strict models
def _iso_text(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("a time as an ISO 8601 string with its UTC offset, e.g. \"2026-09-14T10:02:11Z\"")
    return value


Timestamp = Annotated[AwareDatetime, Field(strict=False, examples=["2026-09-14T10:02:11Z"]),
                      BeforeValidator(_iso_text)]


def wire(value: int | str) -> int | str:
    """An id as answers carry it: a number where JSON readers hold it exactly, else a string (a decimal, or the
    shop's own text id)."""
    return value if isinstance(value, str) or value <= EXACT_IN_JSON else str(value)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Problem(BaseModel):
    """The body of every 4xx and 5xx answer."""

    error: str  # "invalid request", "payload too large", "unavailable"
    detail: list[str] | str  # what was wrong, field by field, and what was expected


PROBLEMS: dict[int | str, dict[str, Any]] = {
    400: {"model": Problem, "description": "the body could not be read as JSON (it is not UTF-8 text)"},
    413: {"model": Problem, "description": "the body is larger than the configured max_body_bytes"},
    422: {"model": Problem, "description": "the body is not what the endpoint expects: each problem names the "
                                           "field and what was expected"}}
FEEDBACK_PROBLEMS = {**PROBLEMS,
                     404: {"model": Problem, "description": "the request id was not issued to this user by the app, "
                                                            "or an item id is not in the catalog"},
                     401: {"model": Problem, "description": "no API key, or not one of the shop's (nothing "
                                                            "written)"},
                     503: {"model": Problem, "description": "the event log could not be written; the same request "
                                                            "may be sent again"}}


def _field(part: Any) -> bool:
    """A part of an error's location that names a field or an index (not a pydantic union branch)."""
    return isinstance(part, int) or (isinstance(part, str) and part.isidentifier())


def problems(errors: list[dict[str, Any]]) -> list[str]:
    """Pydantic validation errors as ``where: what (got value)``, one per field (the branches of an id that may be
    a number or a string are said together)."""
    by_field: dict[str, list[dict[str, Any]]] = {}
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if _field(p))
        by_field.setdefault(where, []).append(error)
    out = []
    for where, found in by_field.items():
        first = found[0]
        got = f" (got {first['input']!r})" if "input" in first and not isinstance(first["input"], dict | list) else ""
        if len(found) > 1 and any(e.get("type") == "string_type" for e in found):  # an id: number or string
            number = next(e for e in found if e.get("type") != "string_type")
            out.append(f"{where}: {number.get('msg', 'invalid')}; or send it as a decimal string{got}")
        else:
            out.append(f"{where}: {'; '.join(dict.fromkeys(e.get('msg', 'invalid') for e in found))}{got}")
    return out


class Context(Strict):
    category: Annotated[str, Field(min_length=1, max_length=200)] | None = None  # cold start: popular in it


class RecommendRequest(Strict):
    user_id: Id
    k: json_int(ge=1, description="how many items (1 to the configured max_k)") = 10
    context: Context | None = None
    exclude: list[Id] = Field(default_factory=list, description="item ids never to return")


class Scored(BaseModel):
    item_id: WireId
    score: float | None  # the ranker's click probability (without a ranker: the retrieval score); None otherwise


class RecommendResponse(BaseModel):
    request_id: str = Field(description="send it back with /feedback (a decimal string: it exceeds 2**53)")
    user_id: WireId
    items: list[Scored]
    cold_start: bool
    degraded: bool
    stale_features: bool = Field(default=False, description="the live feature store was down or slow: features "
                                 "from the dataset's snapshot")
    reason: str | None  # why degraded, cold start, or ranked by production instead of the candidate
    variant: str  # which ranking model answered: production, or the candidate (canary / A-B)
    model_versions: dict[str, str]
    timings_ms: dict[str, float]


class FeedbackEvent(Strict):
    item_id: Id
    event_type: Literal["impression", "click", "purchase"]
    position: json_int(ge=0, le=10_000) | None = None  # slot in the served list (impressions)
    timestamp: Timestamp | None = None  # default: when the event is received
    event_id: IdText | None = Field(default=None, description="the client's own id of this event (a decimal "
                                    "string): an event sent twice with the same id is recorded once")

    model_config = ConfigDict(extra="forbid", strict=False)  # timestamp may be ISO text


class FeedbackRequest(Strict):
    request_id: IdText  # of the /recommend answer the events are about (it was issued to this user)
    user_id: Id
    session_id: Id | None = None  # default: the request id
    # (at most 300: so that a request of the most verbose events still fits the default 64 KiB body limit)
    events: Annotated[list[FeedbackEvent], Field(min_length=1, max_length=300)]


class FeedbackResponse(BaseModel):
    accepted: int  # events of the request that are in the log now
    duplicates: int  # of those, how many were recorded before (a retry)
    log: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, bool]
    versions: list[str]  # the ranking model versions the rollout names ("newest": none named)
    rollout_revision: int  # the revision of the rollout state this replica follows (0: none)


def event_ids(request_id: int, body: FeedbackRequest, idempotency_key: str | None) -> list[int]:
    """Each event's id: the client's, else one derived from the idempotency key and the event's place in the
    request, else from what the event says (so a retry of the same request repeats the same ids)."""
    ids = []
    for n, e in enumerate(body.events):
        if e.event_id is not None:
            ids.append(int(e.event_id))
        elif idempotency_key is not None:
            ids.append(event_id_for(request_id, "key", idempotency_key, n))
        else:
            ids.append(event_id_for(request_id, body.user_id, e.item_id, e.event_type, e.position,
                                    e.timestamp.isoformat() if e.timestamp else None))
    return ids


class IdempotencyKeys:
    """The answers to the newest ``size`` /feedback requests that came with an ``Idempotency-Key``: the same key
    and body again gets the same answer without writing anything; the same key with another body is refused."""

    def __init__(self, size: int = 10_000):
        self.size = size
        self._answers: OrderedDict[str, tuple[str, FeedbackResponse]] = OrderedDict()

    @staticmethod
    def _fingerprint(body: FeedbackRequest) -> str:
        return hashlib.sha256(json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()

    def replay(self, key: str, body: FeedbackRequest) -> FeedbackResponse | None:
        from fastapi import HTTPException

        if key not in self._answers:
            return None
        fingerprint, answer = self._answers[key]
        if fingerprint != self._fingerprint(body):
            raise HTTPException(422, [f"header Idempotency-Key: {key!r} was sent before with another body; use a "
                                      "new key for a new request"])
        return answer.model_copy(update={"duplicates": answer.accepted})

    def remember(self, key: str, body: FeedbackRequest, answer: FeedbackResponse) -> None:
        self._answers[key] = (self._fingerprint(body), answer)
        while len(self._answers) > self.size:
            self._answers.popitem(last=False)


DECIMAL_ID = {"type": "string", "pattern": "^[0-9]{1,19}$", "examples": ["4803154931285127168"]}


def _id_strings(node: Any, decimal: dict[str, Any]) -> Any:
    """``node`` with every string branch of an id (``examples: [SKU-0042]``) replaced by ``decimal``."""
    if isinstance(node, dict):
        if node.get("examples") == ["SKU-0042"]:
            return dict(decimal)
        return {key: _id_strings(value, decimal) for key, value in node.items()}
    if isinstance(node, list):
        return [_id_strings(value, decimal) for value in node]
    return node


def spec(routes, config, text_ids: bool = False) -> dict[str, Any]:
    """The OpenAPI document of ``routes`` with the limits ``config`` (a `ServingConfig`) sets: what a request may
    hold is what the schema says, so a request the schema allows is one the app accepts. A shop whose ids are
    integers (not ``text_ids``) takes them as JSON numbers or decimal strings."""
    from fastapi.openapi.utils import get_openapi

    doc = get_openapi(title=TITLE, version=VERSION, description=DESCRIPTION, routes=routes)
    if not config.store.enabled:  # /events is the live store's: an app without one does not offer it
        doc["paths"].pop("/events", None)
        for name in ("EventsRequest", "EventsResponse", "ShopEvent"):
            doc["components"]["schemas"].pop(name, None)
    request = doc["components"]["schemas"]["RecommendRequest"]["properties"]
    request["k"]["maximum"] = config.max_k
    request["exclude"]["maxItems"] = config.max_exclude
    if not text_ids:
        doc["components"]["schemas"] = _id_strings(doc["components"]["schemas"], DECIMAL_ID)
    return doc


TITLE, VERSION = "recsys", "2"
DESCRIPTION = ("Recommendations: retrieve (two-tower + ANN), filter, rank (DLRM on Triton). Feedback and the shop's "
               "own events go back into the event log (with the live store: through the event stream, and into the "
               "features at once).")
