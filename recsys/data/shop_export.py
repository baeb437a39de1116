"""A shop's export read whole: its three tables, their ids coded to Int64, what it lacks derived.

`recsys.data.ingest.read_table` reads one table; this puts the three together, because what a table means
depends on the others: an id column is integer or text by its values in *every* table that has it
(`recsys.ids`), and the users and items tables, signup dates, sessions and event ids a shop does not export are
derived from the events (`recsys.data.derive`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recsys.config import IngestConfig
from recsys.data.derive import derive_event_columns, items_from_events, signup_dates, users_from_events
from recsys.data.ingest import RAW, IngestSchemaError, SourceFile, read_table
from recsys.events import EVENTS, ITEMS, USERS
from recsys.ids import ID_COLUMNS, KINDS, code_expr, is_integer_text


@dataclass
class ShopExport:
    """The export's tables as `read_table` frames (ids coded), ready for the row checks."""

    events: pl.LazyFrame
    users: pl.LazyFrame
    items: pl.LazyFrame
    files: dict[str, list[SourceFile]]
    kinds: dict[str, str]  # id column -> integer | text
    derived: dict[str, list[str]]  # table -> columns (or "table" for the whole table) derived from the events
    extra: dict[str, tuple[str, ...]]  # users / items -> the shop's own attribute columns


def _id_kinds(frames: dict[str, pl.LazyFrame], configured: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(configured) - set(ID_COLUMNS))
    bad = {c: k for c, k in configured.items() if k not in KINDS}
    if unknown or bad:
        raise IngestSchemaError(f"ingest.ids: {unknown or bad} — expected {{column: integer | text}} for columns "
                                f"among {list(ID_COLUMNS)}")
    integer, values = dict.fromkeys(ID_COLUMNS, 0), dict.fromkeys(ID_COLUMNS, 0)
    for name, frame in frames.items():
        names = frame.collect_schema().names()
        columns = [c for c in ID_COLUMNS if c not in configured and RAW + c in names]
        if not columns:
            continue
        try:  # how many of the values are integers, against how many are there
            found = frame.select([pl.struct(is_integer_text(pl.col(RAW + c)).sum().alias("n"),
                                            pl.col(RAW + c).count().alias("of")).alias(c) for c in columns]).collect()
        except pl.exceptions.PolarsError as exc:  # e.g. a file that is not Parquet
            raise IngestSchemaError.reading(f"{name}: the files cannot be read", exc) from exc
        for c, counts in found.row(0, named=True).items():
            integer[c] += counts["n"]
            values[c] += counts["of"]
    # integer ids where at least half the values are (the others are then quarantined as unparseable: a few bad
    # values must not turn a shop's numbers into text); text ids otherwise
    return {c: configured.get(c) or ("integer" if 2 * integer[c] >= values[c] else "text") for c in ID_COLUMNS}


def _coded(frame: pl.LazyFrame, kinds: dict[str, str]) -> pl.LazyFrame:
    names = frame.collect_schema().names()
    return frame.with_columns([code_expr(pl.col(RAW + c)).alias(c) for c, kind in kinds.items()
                               if kind == "text" and c in names])


def read_export(source: Path, ingest: IngestConfig,
                extra_events: Sequence[tuple[str | Path, IngestConfig]] = ()) -> ShopExport:
    """Read the export under ``source`` (and more event sources, e.g. the serving app's feedback log: their ids do
    not count towards the export's id kinds, and are coded as their own ``ids`` config says, else as the
    export's)."""
    derived: dict[str, list[str]] = {}
    read = read_table(source, EVENTS, ingest)
    events, files = derive_event_columns(read.frame, set(read.absent), ingest), {"events": list(read.files)}
    derivable = {c.name for c in EVENTS.columns if c.derived} | ({"event_type"} if ingest.event_type else set())
    derived["events"] = sorted(read.absent & derivable)
    more_events = []
    for folder, how in extra_events:
        more = read_table(Path(folder), EVENTS, how)
        more_events.append((derive_event_columns(more.frame, set(more.absent), how), how))
        files["events"] += more.files
    tables, extra = {}, {}
    for table, pattern in ((USERS, ingest.users), (ITEMS, ingest.items)):
        if pattern:
            got = read_table(source, table, ingest)
            tables[table.name], files[table.name], extra[table.name] = got.frame, got.files, got.extra
            if table is USERS and "signup_date" in got.absent:
                derived["users"] = ["signup_date"]
        else:
            tables[table.name], files[table.name], extra[table.name] = None, [], ()
            derived[table.name] = ["table"]
    kinds = _id_kinds({"events": events, **{k: v for k, v in tables.items() if v is not None}}, ingest.ids)
    # another source's ids are coded as its config says (the serving app's feedback log holds codes already),
    # else as the export's
    events = pl.concat([_coded(events, kinds), *(_coded(frame, {c: how.ids.get(c, kind) for c, kind in kinds.items()})
                                                 for frame, how in more_events)], how="vertical_relaxed")
    users = _coded(tables["users"], kinds) if tables["users"] is not None else users_from_events(events)
    if derived.get("users") == ["signup_date"]:
        users = signup_dates(users, events)
    items = _coded(tables["items"], kinds) if tables["items"] is not None else items_from_events(events)
    return ShopExport(events, users, items, files, kinds, {k: v for k, v in derived.items() if v}, extra)
