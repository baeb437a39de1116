"""Encoders: raw feature values -> model inputs, fitted once per dataset and shared by every path.

The offline pipeline, the online lookup tables and (later) the serving request encoder all call
`Encoders.expr`, so a value is encoded the same way everywhere. Fitted state (vocabularies, bucket
boundaries) is saved as JSON next to the dataset; nothing here unpickles.

Conventions: categorical indices are int64 and index 0 means missing / unknown / padding, so an
embedding table for a feature has ``cardinality`` rows. Dense values are float32.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.errors import RecsysError
from recsys.schema import Feature, FeatureSchema, Kind


@dataclass(frozen=True)
class FittedEncoding:
    """What one embedding table / dense feature needs to encode a raw value."""

    type: str
    cardinality: int | None = None  # rows of the embedding table (sparse kinds)
    vocab: list[Any] | None = None  # vocab: raw values in index order (index = position + 1)
    boundaries: list[float] | None = None  # buckets
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and v != {}}


@dataclass(frozen=True)
class Encoders:
    schema_hash: str
    fitted: dict[str, FittedEncoding]  # by embedding table (sparse) or feature name (dense)
    _vocab_rows: dict[str, dict[Any, int]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def expr(self, feature: Feature, raw: pl.Expr) -> pl.Expr:
        """Expression encoding ``raw`` (the feature's raw value) into the model input."""
        if feature.kind == Kind.LABEL:
            return raw.cast(pl.Float32)
        if feature.kind == Kind.DENSE:
            value = raw.cast(pl.Float64).fill_null(feature.default)
            if feature.encoding_params["transform"] == "log1p":
                value = value.clip(lower_bound=0).log1p()
            return value.cast(pl.Float32)
        if feature.default is not None:
            raw = raw.fill_null(feature.default)
        if feature.kind == Kind.HISTORY:
            # histories are encoded item by item where they are built (`index`); only the padding is left
            length = feature.length
            return raw.fill_null(pl.lit([0] * length, dtype=pl.Array(pl.Int64, length)))
        return self.index(feature.embedding_table, raw)

    def index(self, table: str, raw: pl.Expr) -> pl.Expr:
        """Raw values -> int64 rows of embedding table ``table`` (0 for missing or unknown)."""
        return self._index(self.fitted[table], raw)

    @staticmethod
    def _index(enc: FittedEncoding, raw: pl.Expr) -> pl.Expr:
        if enc.type == "hash":
            index = raw.cast(pl.Int64) % (enc.cardinality - 1) + 1  # type: ignore[operator]
        elif enc.type == "vocab":
            index = raw.replace_strict(enc.vocab, list(range(1, len(enc.vocab) + 1)),  # type: ignore[arg-type]
                                       default=0, return_dtype=pl.Int64)
        elif enc.type == "buckets":
            index = pl.lit(pl.Series(enc.boundaries, dtype=pl.Float64)).search_sorted(
                raw.cast(pl.Float64), side="right").cast(pl.Int64) + 1
        elif enc.type == "clip":
            index = raw.cast(pl.Int64).clip(0, enc.params["max"]) + 1
        else:
            raise ValueError(f"unknown encoding {enc.type!r}")
        return pl.when(raw.is_null()).then(0).otherwise(index).cast(pl.Int64)

    def array(self, feature: Feature, raw: np.ndarray, missing: np.ndarray | None = None) -> np.ndarray:
        """`expr` on arrays: ``raw`` (``missing`` marks its nulls) -> the model input, float32 or int64. The live
        store encodes a request's few rows with it, where a Polars query costs milliseconds; a test holds it to
        `expr` on every encoding, and the live parity test to the offline builder."""
        if feature.kind == Kind.LABEL:
            return raw.astype(np.float32)
        if feature.kind == Kind.DENSE:
            value = raw.astype(np.float64)
            if missing is not None:
                value = np.where(missing, np.nan if feature.default is None else feature.default, value)
            if feature.encoding_params["transform"] == "log1p":
                value = np.log1p(np.maximum(value, 0.0))
            return value.astype(np.float32)
        if feature.default is not None and missing is not None:
            raw, missing = np.where(missing, feature.default, raw), None
        if feature.kind == Kind.HISTORY:
            return raw.astype(np.int64) if missing is None else np.where(missing[:, None], 0, raw).astype(np.int64)
        return self.index_array(feature.embedding_table, raw, missing)

    def index_array(self, table: str, raw: np.ndarray, missing: np.ndarray | None = None) -> np.ndarray:
        """`index` on arrays (0 where ``missing``)."""
        enc = self.fitted[table]
        if enc.type == "hash":
            index = raw.astype(np.int64) % (enc.cardinality - 1) + 1  # (floored, as Polars' %)
        elif enc.type == "vocab":
            if table not in self._vocab_rows:
                self._vocab_rows[table] = {v: n for n, v in enumerate(enc.vocab, start=1)}  # type: ignore[arg-type]
            rows = self._vocab_rows[table]
            index = np.fromiter((rows.get(v, 0) for v in raw.tolist()), np.int64, len(raw))
        elif enc.type == "buckets":
            index = np.searchsorted(np.asarray(enc.boundaries, np.float64), raw.astype(np.float64), side="right") + 1
        elif enc.type == "clip":
            index = np.clip(raw.astype(np.int64), 0, enc.params["max"]) + 1
        else:
            raise ValueError(f"unknown encoding {enc.type!r}")
        return index.astype(np.int64) if missing is None else np.where(missing, 0, index).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"schema_hash": self.schema_hash, "fitted": {k: v.to_dict() for k, v in self.fitted.items()}}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path, schema: FeatureSchema) -> Encoders:
        data = json.loads(Path(path).read_text())
        if data["schema_hash"] != schema.hash:
            raise RecsysError(f"{path}: encoders were fitted for schema {data['schema_hash']}, "
                             f"but the schema is {schema.hash}")
        return cls(schema_hash=data["schema_hash"],
                   fitted={k: FittedEncoding(**v) for k, v in data["fitted"].items()})


def _vocab(values: pl.Series, max_size: int | None) -> list[Any]:
    """Most frequent first, ties by value: deterministic whatever the row order."""
    counts = values.drop_nulls().value_counts(name="n").sort(["n", values.name], descending=[True, False])
    vocab = counts[values.name].to_list()
    return vocab[:max_size] if max_size else vocab


def fit_encoders(schema: FeatureSchema, raw_values: dict[str, pl.Series]) -> Encoders:
    """Fit every embedding table's encoding from raw training values.

    Args:
        raw_values: feature name -> its raw values on the data to fit on (attributes: the users or
            items table; the item id: the catalogue).
    """
    fitted: dict[str, FittedEncoding] = {}
    for f in schema.features:
        if f.kind == Kind.DENSE:
            fitted[f.name] = FittedEncoding(type="dense", params=dict(f.encoding_params))
        if not f.is_sparse or f.kind == Kind.HISTORY:
            continue
        p = f.encoding_params
        if f.encoding == "hash":
            fitted[f.name] = FittedEncoding(type="hash", cardinality=int(p["buckets"]))
        elif f.encoding == "clip":
            fitted[f.name] = FittedEncoding(type="clip", cardinality=int(p["max"]) + 2, params={"max": p["max"]})
        elif f.encoding == "vocab":
            vocab = _vocab(raw_values[f.name], p.get("max_size"))
            if f.kind == Kind.ITEM_ID:
                vocab = sorted(vocab)  # the catalogue in id order: index i <-> i-th item id
            fitted[f.name] = FittedEncoding(type="vocab", cardinality=len(vocab) + 1, vocab=vocab)
        elif f.encoding == "buckets":
            if "boundaries" in p:
                bounds = sorted(float(b) for b in p["boundaries"])
            else:
                values = raw_values[f.name].drop_nulls().cast(pl.Float64).to_numpy()
                qs = np.linspace(0, 1, int(p["quantiles"]) + 1)[1:-1]
                bounds = sorted(set(np.quantile(values, qs).round(6).tolist())) if len(values) else []
            fitted[f.name] = FittedEncoding(type="buckets", cardinality=len(bounds) + 2, boundaries=bounds)
    return Encoders(schema_hash=schema.hash, fitted=fitted)
