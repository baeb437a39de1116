"""The users' and items' attribute columns as the schema's ``attribute`` features read them.

Any column of the users or items table can be a feature: ours (``country``, ``category``, ``price``...) or one a
shop exports under its own name (kept by `recsys.data.ingest.read_table` as it came; a CSV's are text). Each
feature's column is brought to the type its encoding needs — numbers for ``dense`` and ``buckets``, text for
``vocab``, an integer code for ``hash`` — a value that does not convert becoming missing (the feature's default).
A feature whose column the shop's data does not have at all gets its default everywhere, and one warning naming
the feature.
"""

from __future__ import annotations

import logging

import polars as pl

from recsys.ids import code_expr
from recsys.schema import FeatureSchema

log = logging.getLogger(__name__)


def _as_encoded(column: pl.Expr, dtype: pl.DataType, encoding: str) -> pl.Expr:
    if encoding in ("dense", "buckets"):
        if dtype == pl.String:
            column = column.str.strip_chars()
        return column.cast(pl.Float64, strict=False)
    if encoding == "hash" and not dtype.is_integer():
        return code_expr(column)
    if encoding == "vocab" and dtype != pl.String:
        return column.cast(pl.String)
    return column


def attribute_tables(schema: FeatureSchema, users: pl.DataFrame,
                     items: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, list[str]]:
    """``users`` and ``items`` with every attribute feature's column typed for its encoding (an absent column:
    all missing), and the warnings for the features whose column is absent or empty."""
    tables, warnings = {"users": users, "items": items}, []
    for f in schema.features:
        if f.op != "attribute":
            continue
        name, column = f.params["table"], f.params["column"]
        frame = tables[name]
        if column not in frame.columns or frame[column].null_count() == frame.height:
            warnings.append(f"feature {f.name!r}: the shop's {name} table has no {column!r} values"
                            + (" (no such column)" if column not in frame.columns else "")
                            + f"; it gets its default ({f.default if f.default is not None else 'unknown'}) everywhere")
            if column not in frame.columns:
                frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(column))
        tables[name] = frame.with_columns(_as_encoded(pl.col(column), frame.schema[column], f.encoding).alias(column))
    for warning in warnings:
        log.warning(warning)
    return tables["users"], tables["items"], warnings
