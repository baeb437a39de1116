"""The columns and tables a shop's export does not have, derived from what it has.

Most shops export user, item, event type and time; the rest of our format follows from those:

* ``event_type``: ``ingest.event_type`` for a log of one kind of event (a ratings file read as views).
* ``event_id``: a stable hash of the row's values (time, user, item, event type, request, position), so the same
  row read twice gets the same id and identical rows are one event (counted as ``deduplicated``).
* ``session_id``: a user's events in time order, a new session after ``ingest.session_gap_minutes`` (30) without
  an event; its id is a hash of the user and the session's first event time, so appending later events never
  renumbers an earlier session. With ``ingest.derive_empty_sessions`` (the app's event log: ``POST /events`` takes
  events without one), a row that leaves the column empty gets the derived id.
* ``signup_date``: the date of the user's first event (a user with none: the export's last event date).
* a users table (``ingest.users: null``): one row per user of the events, signup as above.
* an items table (``ingest.items: null``): one row per item of the events, its attributes unknown (null: every
  feature on them gets its default), available.

Every derived value goes through the same row checks as a value read from a file: it is written into the raw-text
twin as well, so a quarantined row shows what was derived.
"""

from __future__ import annotations

import polars as pl

from recsys.config import IngestConfig
from recsys.data.ingest import RAW, RAW_LINE, SOURCE_FILE, SOURCE_ROW, IngestSchemaError
from recsys.events import EVENT_TYPES, ITEMS, USERS, EventType, Table
from recsys.ids import code_expr

DERIVED = "(derived from the events)"  # the source_file of a table row made from the events
_ROW_VALUES = ("timestamp", "user_id", "item_id", "event_type", "request_id", "position")


def _set(column: str, value: pl.Expr) -> list[pl.Expr]:
    return [value.alias(column), value.cast(pl.String).alias(RAW + column)]


def event_ids(events: pl.LazyFrame) -> pl.LazyFrame:
    """``event_id`` as the stable hash of each row's raw values."""
    row = pl.concat_str([pl.col(RAW + c).fill_null("") for c in _ROW_VALUES], separator="\x1f")
    return events.with_columns(_set("event_id", code_expr(row)))


def session_ids(events: pl.LazyFrame, gap_minutes: int) -> pl.LazyFrame:
    """``session_id`` from each user's inactivity gaps (by the user's id as the shop wrote it, so the ids are the
    same whether user ids are numbers or text). A row without a user or a time is a session of its own (it is
    quarantined for the missing value anyway)."""
    user, ts = pl.col(RAW + "user_id").str.strip_chars(), pl.col("timestamp")
    order = pl.int_range(pl.len(), dtype=pl.Int64).alias("__order")
    ranked = events.with_columns(order).sort([RAW + "user_id", "timestamp", "__order"], nulls_last=True)
    previous = ts.shift(1).over(user)  # (rows sorted by user, then time)
    new = previous.is_null() | ((ts - previous) > pl.duration(minutes=gap_minutes))
    start = pl.when(new).then(ts).forward_fill().over(user)
    key = pl.when(user.is_not_null() & ts.is_not_null()).then(
        pl.concat_str([user, start.dt.strftime("%Y-%m-%dT%H:%M:%S%.6f")], separator="\x1f")
    ).otherwise(pl.concat_str([pl.lit("row"), pl.col(SOURCE_FILE), pl.col(SOURCE_ROW).cast(pl.String)],
                              separator="\x1f"))
    return ranked.with_columns(_set("session_id", code_expr(key))).sort("__order").drop("__order")


def _empty(raw: str) -> pl.Expr:
    return pl.col(raw).is_null() | (pl.col(raw).str.strip_chars() == "")


def sessions_where_empty(events: pl.LazyFrame, gap_minutes: int) -> pl.LazyFrame:
    """``session_id`` derived (`session_ids`) in the rows that leave it empty; the others keep theirs."""
    columns = ("session_id", RAW + "session_id")
    derived = session_ids(events.with_columns(pl.col(c).alias("__kept" + c) for c in columns), gap_minutes)
    empty = _empty("__kept" + RAW + "session_id")
    return derived.with_columns(pl.when(empty).then(pl.col(c)).otherwise(pl.col("__kept" + c)).alias(c)
                                for c in columns).drop("__kept" + c for c in columns)


def derive_event_columns(events: pl.LazyFrame, absent: set[str], cfg: IngestConfig) -> pl.LazyFrame:
    """Fill the derivable event columns in ``absent`` (those the source files do not have)."""
    if "event_type" in absent and cfg.event_type:
        if cfg.event_type not in EVENT_TYPES:
            raise IngestSchemaError(f"ingest.event_type: {cfg.event_type!r} is not one of {list(EVENT_TYPES)}")
        events = events.with_columns(_set("event_type", pl.lit(cfg.event_type).cast(EventType, strict=False)))
    if "event_id" in absent:
        events = event_ids(events)
    if "session_id" in absent:
        events = session_ids(events, cfg.session_gap_minutes)
    elif cfg.derive_empty_sessions:
        events = sessions_where_empty(events, cfg.session_gap_minutes)
    return events


def _first_events(events: pl.LazyFrame) -> pl.LazyFrame:
    return (events.filter(pl.col(RAW + "user_id").is_not_null() & pl.col("timestamp").is_not_null())
            .group_by(pl.col(RAW + "user_id").str.strip_chars().alias("__user"))
            .agg(pl.col("timestamp").min().dt.date().alias("__first")))


def signup_dates(users: pl.LazyFrame, events: pl.LazyFrame) -> pl.LazyFrame:
    """``signup_date`` of each user row as the date of their first event (none: the last event date)."""
    last = events.select(pl.col("timestamp").max().dt.date()).collect().item()
    joined = users.with_columns(pl.col(RAW + "user_id").str.strip_chars().alias("__user")).join(
        _first_events(events), on="__user", how="left", maintain_order="left")
    return joined.with_columns(_set("signup_date", pl.col("__first").fill_null(last))).drop("__user", "__first")


def table_from_events(table: Table, events: pl.LazyFrame, parsed: dict[str, pl.Expr]) -> pl.LazyFrame:
    """One row per distinct ``table.key`` of the events (as the shop wrote it), in the shape `read_table`
    returns: the key, the ``parsed`` columns given, every other column null."""
    key = table.key
    rows = (events.filter(pl.col(RAW + key).is_not_null())
            .select(pl.col(RAW + key).str.strip_chars(), pl.col(key)).unique(RAW + key).sort(RAW + key))
    if table.name == "users":
        rows = rows.join(_first_events(events).rename({"__user": RAW + key}), on=RAW + key, how="left")
    exprs = [pl.lit(DERIVED).alias(SOURCE_FILE), pl.int_range(pl.len(), dtype=pl.Int64).alias(SOURCE_ROW),
             pl.lit(None, dtype=pl.String).alias(RAW_LINE)]
    for c in table.columns:
        if c.name == key:
            exprs += [pl.col(key), pl.col(RAW + key)]
        elif c.name in parsed:
            exprs += _set(c.name, parsed[c.name].cast(c.dtype))
        else:
            exprs += [pl.lit(None, dtype=c.dtype).alias(c.name), pl.lit(None, dtype=pl.String).alias(RAW + c.name)]
    return rows.select(exprs)


def users_from_events(events: pl.LazyFrame) -> pl.LazyFrame:
    return table_from_events(USERS, events, {"signup_date": pl.col("__first")})


def items_from_events(events: pl.LazyFrame) -> pl.LazyFrame:
    return table_from_events(ITEMS, events, {"available": pl.lit(True)})

