"""The feature schema: one definition of every model input, loaded from ``configs/features.yaml``.

Everything that needs to know about a feature (the Polars pipeline, the dataset statistics, later the
TorchRec embedding configs, ONNX inputs, Triton configs and the serving encoder) asks this module.
Nothing else spells a feature name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from recsys.errors import RecsysError
from recsys.events import EVENT_TYPES, TABLES
from recsys.hashing import stable_hash

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCHEMA_PATH = PROJECT_ROOT / "configs" / "features.yaml"
SCHEMA_ENV = "RECSYS_SCHEMA"  # a shop's own schema file, for every command (`recsys data init` writes a starter)

MODEL_PARTS = ("two_tower.user", "two_tower.item", "dlrm")


class SchemaError(RecsysError, ValueError):
    """The feature schema file is invalid; the message names the feature and field."""


class Kind(StrEnum):
    USER_ID = "user_id"
    ITEM_ID = "item_id"
    CATEGORICAL = "categorical"
    DENSE = "dense"
    HISTORY = "history"
    LABEL = "label"


class Scope(StrEnum):
    """What a feature's value depends on (decides where serving looks it up)."""

    USER = "user"  # the user and the time
    ITEM = "item"  # the item and the time
    CROSS = "cross"  # the user, the item and the time
    CONTEXT = "context"  # the request (position)
    LABEL = "label"


# op -> (allowed params with required flag, scope); scope None = decided by params
OPS: dict[str, tuple[dict[str, bool], Scope | None]] = {
    "id": ({"column": True}, None),
    "attribute": ({"table": True, "column": True}, None),
    "user_tenure_days": ({}, Scope.USER),
    "user_event_count": ({"event_types": True}, Scope.USER),
    "user_recency_hours": ({"event_types": True}, Scope.USER),
    "user_history": ({"event_types": True, "length": True}, Scope.USER),
    "user_category_share": ({"event_types": True}, Scope.CROSS),
    "item_event_count": ({"event_types": True, "window_days": False}, Scope.ITEM),
    "item_rate": ({"numerator": True, "denominator": True, "prior": True, "prior_strength": True}, Scope.ITEM),
    "position": ({}, Scope.CONTEXT),
    "clicked": ({}, Scope.LABEL),
}

ENCODINGS: dict[str, dict[str, bool]] = {
    "hash": {"buckets": True},
    "vocab": {"max_size": False},
    "buckets": {"boundaries": False, "quantiles": False},
    "clip": {"max": True},
    "dense": {"transform": True},
    "embedding": {"table": True},
}
KIND_ENCODINGS: dict[Kind, tuple[str, ...]] = {
    Kind.USER_ID: ("hash", "vocab"),
    Kind.ITEM_ID: ("hash", "vocab"),
    Kind.CATEGORICAL: ("hash", "vocab", "buckets", "clip"),
    Kind.DENSE: ("dense",),
    Kind.HISTORY: ("embedding",),
    Kind.LABEL: (),
}
TRANSFORMS = ("identity", "log1p")


@dataclass(frozen=True)
class Feature:
    """One model input (or label).

    Attributes:
        name: the name every stage uses (column in shards, ONNX input, Triton input).
        kind: what sort of input it is (see `Kind`).
        op: how the raw value is computed (see OPS); ``params`` holds the op's arguments.
        encoding: how the raw value becomes the model input; ``encoding_params`` its arguments.
        default: raw value used where it is missing; None means "missing" (index 0 for categoricals).
        used_by: which model parts take it as input.
    """

    name: str
    kind: Kind
    op: str
    params: dict[str, Any]
    encoding: str | None
    encoding_params: dict[str, Any]
    default: Any
    used_by: tuple[str, ...]
    doc: str = ""

    @property
    def scope(self) -> Scope:
        fixed = OPS[self.op][1]
        if fixed is not None:
            return fixed
        if self.op == "id":
            return Scope.USER if self.params["column"] == "user_id" else Scope.ITEM
        return Scope.USER if self.params["table"] == "users" else Scope.ITEM

    @property
    def is_sparse(self) -> bool:
        """Looked up in an embedding table (ids, categoricals, histories)."""
        return self.kind in (Kind.USER_ID, Kind.ITEM_ID, Kind.CATEGORICAL, Kind.HISTORY)

    @property
    def embedding_table(self) -> str:
        """Name of the embedding table (and vocabulary) this feature indexes into."""
        return self.encoding_params["table"] if self.kind == Kind.HISTORY else self.name

    @property
    def model_dtype(self) -> str:
        """dtype of the encoded model input: int64 indices or float32 values."""
        return "int64" if self.is_sparse else "float32"

    @property
    def length(self) -> int:
        """Number of values per example: 1, or the padded history length."""
        return int(self.params["length"]) if self.kind == Kind.HISTORY else 1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": str(self.kind),
            "compute": {"op": self.op, **self.params},
            "used_by": list(self.used_by),
        }
        if self.encoding is not None:
            out["encoding"] = {"type": self.encoding, **self.encoding_params}
        if self.default is not None:
            out["default"] = self.default
        return out


@dataclass(frozen=True)
class FeatureSchema:
    version: int
    features: tuple[Feature, ...]
    examples: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @cached_property
    def hash(self) -> str:
        """Stable content hash: same features and examples, same hash (comments and layout don't count)."""
        return stable_hash(self.to_dict())[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "examples": self.examples,
            "features": [f.to_dict() for f in self.features],
        }

    def __getitem__(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"no feature named {name!r} in the schema ({self.source})")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def by_kind(self, *kinds: Kind) -> list[Feature]:
        return [f for f in self.features if f.kind in kinds]

    def by_scope(self, *scopes: Scope) -> list[Feature]:
        return [f for f in self.features if f.scope in scopes]

    def used_by(self, part: str) -> list[Feature]:
        """Inputs of one model part (``two_tower.user``, ``two_tower.item``, ``dlrm``), labels excluded."""
        if part not in MODEL_PARTS:
            raise KeyError(f"unknown model part {part!r}; expected one of {', '.join(MODEL_PARTS)}")
        return [f for f in self.features if part in f.used_by and f.kind != Kind.LABEL]

    def label(self, part: str = "dlrm") -> Feature | None:
        labels = [f for f in self.features if f.kind == Kind.LABEL and part in f.used_by]
        return labels[0] if labels else None

    @property
    def user_id(self) -> Feature:
        return self.by_kind(Kind.USER_ID)[0]

    @property
    def item_id(self) -> Feature:
        return self.by_kind(Kind.ITEM_ID)[0]

    @property
    def history(self) -> list[Feature]:
        return self.by_kind(Kind.HISTORY)

    def embedding_tables(self) -> dict[str, list[str]]:
        """Embedding table name -> the sparse features that index into it."""
        tables: dict[str, list[str]] = {}
        for f in self.features:
            if f.is_sparse:
                tables.setdefault(f.embedding_table, []).append(f.name)
        return tables


def _check_params(where: str, given: dict[str, Any], allowed: dict[str, bool]) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise SchemaError(f"{where}: unknown field(s) {unknown}; expected {sorted(allowed) or 'none'}")
    missing = sorted(k for k, required in allowed.items() if required and k not in given)
    if missing:
        raise SchemaError(f"{where}: missing field(s) {missing}")


def _check_event_types(where: str, params: dict[str, Any]) -> None:
    for key in ("event_types", "numerator", "denominator"):
        if key not in params:
            continue
        values = params[key]
        if not isinstance(values, list) or not values or any(v not in EVENT_TYPES for v in values):
            raise SchemaError(f"{where}.{key}: expected a non-empty list of {list(EVENT_TYPES)}, got {values!r}")


def _parse_feature(raw: Any, index: int) -> Feature:
    if not isinstance(raw, dict) or "name" not in raw:
        raise SchemaError(f"features[{index}]: expected a mapping with a 'name', got {raw!r}")
    name = raw["name"]
    where = f"feature {name!r}"
    _check_params(where, raw, {"name": True, "kind": True, "compute": True, "encoding": False,
                               "default": False, "used_by": True, "doc": False})
    try:
        kind = Kind(raw["kind"])
    except ValueError:
        raise SchemaError(f"{where}.kind: {raw['kind']!r} is not one of {[k.value for k in Kind]}") from None

    compute = dict(raw["compute"] or {})
    op = compute.pop("op", None)
    if op not in OPS:
        raise SchemaError(f"{where}.compute.op: {op!r} is not one of {sorted(OPS)}")
    _check_params(f"{where}.compute", compute, OPS[op][0])
    _check_event_types(f"{where}.compute", compute)
    if op == "id" and compute["column"] not in ("user_id", "item_id"):
        raise SchemaError(f"{where}.compute.column: expected user_id or item_id, got {compute['column']!r}")
    if op == "attribute":
        table = TABLES.get(compute["table"])
        if table is None or compute["table"] == "events":
            raise SchemaError(f"{where}.compute.table: expected users or items, got {compute['table']!r}")
        if not isinstance(compute["column"], str) or not compute["column"]:
            raise SchemaError(f"{where}.compute.column: expected the name of a {table.name} column (ours: "
                              f"{table.names}, or one of the shop's own), got {compute['column']!r}")

    encoding_raw = dict(raw.get("encoding") or {})
    encoding = encoding_raw.pop("type", None)
    allowed = KIND_ENCODINGS[kind]
    if (encoding is None) != (not allowed) or (encoding is not None and encoding not in allowed):
        raise SchemaError(f"{where}.encoding.type: {encoding!r} does not suit kind {kind.value!r}; "
                          f"expected {list(allowed) or 'no encoding'}")
    if encoding is not None:
        _check_params(f"{where}.encoding", encoding_raw, ENCODINGS[encoding])
    if encoding == "dense" and encoding_raw["transform"] not in TRANSFORMS:
        raise SchemaError(f"{where}.encoding.transform: expected one of {TRANSFORMS}, "
                          f"got {encoding_raw['transform']!r}")
    if encoding == "buckets" and ("boundaries" in encoding_raw) == ("quantiles" in encoding_raw):
        raise SchemaError(f"{where}.encoding: buckets need exactly one of 'boundaries' or 'quantiles'")

    used_by = raw["used_by"]
    if not isinstance(used_by, list) or any(p not in MODEL_PARTS for p in used_by):
        raise SchemaError(f"{where}.used_by: expected a list of {list(MODEL_PARTS)}, got {used_by!r}")
    return Feature(name=name, kind=kind, op=op, params=compute, encoding=encoding,
                   encoding_params=encoding_raw, default=raw.get("default"), used_by=tuple(used_by),
                   doc=raw.get("doc", ""))


def parse_schema(raw: dict[str, Any], source: str = "<dict>") -> FeatureSchema:
    """Build and check a schema from its YAML mapping; raises SchemaError naming what is wrong."""
    if not isinstance(raw, dict):
        raise SchemaError(f"{source}: expected a mapping at the top level")
    _check_params(source, raw, {"version": True, "examples": True, "features": True})
    features = tuple(_parse_feature(f, i) for i, f in enumerate(raw["features"] or []))
    names = [f.name for f in features]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SchemaError(f"{source}: duplicate feature names {duplicates}")
    for kind in (Kind.USER_ID, Kind.ITEM_ID):
        if sum(f.kind == kind for f in features) != 1:
            raise SchemaError(f"{source}: expected exactly one feature of kind {kind.value!r}")
    by_name = dict(zip(names, features, strict=True))
    for f in features:
        if f.kind != Kind.HISTORY:
            continue
        table = by_name.get(f.encoding_params["table"])
        if table is None:
            raise SchemaError(f"feature {f.name!r}.encoding.table: no feature named "
                              f"{f.encoding_params['table']!r} to share an embedding table with")
        if not (table.kind == Kind.ITEM_ID or (table.kind == Kind.CATEGORICAL and table.op == "attribute"
                                               and table.params["table"] == "items")):
            raise SchemaError(f"feature {f.name!r}.encoding.table: a history holds items or one of their attributes, "
                              f"so the table must be the item id or a categorical attribute of the items table; "
                              f"{table.name!r} is neither")
    examples = raw["examples"]
    _check_params(f"{source}: examples", examples, {"ranking": True, "retrieval": True})
    if examples["ranking"].get("event_type") not in EVENT_TYPES:
        raise SchemaError(f"{source}: examples.ranking.event_type must be one of {list(EVENT_TYPES)}")
    _check_event_types(f"{source}: examples.retrieval", examples["retrieval"])
    return FeatureSchema(version=int(raw["version"]), features=features, examples=examples, source=source)


def load_schema(path: str | Path | None = None) -> FeatureSchema:
    """Load the feature schema (default: ``$RECSYS_SCHEMA``, else ``configs/features.yaml``)."""
    path = Path(path or os.environ.get(SCHEMA_ENV) or DEFAULT_SCHEMA_PATH)
    with open(path) as fh:
        raw = yaml.safe_load(fh)
    return parse_schema(raw, source=str(path))

