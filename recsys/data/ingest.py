"""Ingest: read a shop's export (Parquet, CSV or JSON lines; ours or anyone's) into the canonical tables.

A column mapping in config (``ingest.columns``) renames their columns to ours, ``ingest.event_types``
renames their event types, and timestamps may be ISO text, a strptime format or epoch numbers.

Reading never drops a row. Each parsed column keeps its raw text beside it so validation can
quarantine a row whose value does not parse, with the value as it was. A JSON line that is not a JSON object
(torn by a writer killed mid-append, or garbled) is a row too, with every column null and its text in
``raw_line``; the other lines of its file are read as usual. Problems with the *table* (a required column
missing, a column of an incompatible type, a file that cannot be read) raise `IngestSchemaError` instead.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import polars as pl

from recsys.config import IngestConfig
from recsys.errors import RecsysError
from recsys.eventlog.jsonl import LINE, read_jsonl
from recsys.events import EventType, Table
from recsys.hashing import file_sha256

RAW = "__raw_"  # prefix of the raw-text twin of every parsed column
SOURCE_FILE = "source_file"  # the file a row was read from
SOURCE_ROW = "source_row"  # where in that file: the 0-based row (Parquet; CSV not counting the header), or the
#                            1-based line number (JSON lines)
RAW_LINE = "raw_line"  # the text of a JSON line that could not be read as a row; null on every other row
_BAD_LINE = "__bad_line"  # RAW_LINE while the files are read, apart from any field the files have
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".json": "jsonl"}


class IngestSchemaError(RecsysError, ValueError):
    """A source table cannot be read as the canonical table (missing or mistyped columns, unreadable files)."""

    @classmethod
    def reading(cls, what: str, exc: Exception) -> IngestSchemaError:
        """``what`` failed with ``exc`` (a Polars or OS error): one line, the first of the reader's message."""
        lines = str(exc).strip().splitlines()
        return cls(f"{what}: {lines[0] if lines else type(exc).__name__}")


@dataclass(frozen=True)
class SourceFile:
    path: str
    sha256: str
    bytes: int

    def to_dict(self) -> dict:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}


def find_files(source: Path, pattern: str, what: str) -> list[Path]:
    paths = sorted(Path(p) for p in glob.glob(str(source / pattern)) if Path(p).is_file())
    if not paths:
        raise IngestSchemaError(f"{what}: no files match {pattern!r} under {source} "
                                f"(set ingest.{what} in the data config" + ("; null derives the table from the events)"
                                                            if what in ("users", "items") else ")"))
    return paths


def describe_files(paths: list[Path]) -> list[SourceFile]:
    return [SourceFile(str(p.resolve()), file_sha256(p), p.stat().st_size) for p in paths]


def _format(paths: list[Path], cfg: IngestConfig) -> str:
    if cfg.format != "auto":
        if cfg.format not in set(FORMATS.values()):
            raise IngestSchemaError(f"ingest.format: {cfg.format!r} is not one of auto, parquet, csv, jsonl")
        return cfg.format
    kinds = {FORMATS.get(p.suffix.lower()) for p in paths}
    if None in kinds or len(kinds) != 1:
        raise IngestSchemaError(f"cannot tell the format of {[p.name for p in paths]}: use one of "
                                f"{sorted(FORMATS)} or set ingest.format")
    return kinds.pop()  # type: ignore[return-value]


def _scan_jsonl(paths: list[Path]) -> pl.LazyFrame:
    """Every line of ``paths`` as a row: its fields, or for a line that is not a JSON object only its text."""
    frames = []
    for path in paths:
        try:
            rows, bad = read_jsonl(path, max_text=None)
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise IngestSchemaError.reading(f"{path}: cannot be read as JSON lines", exc) from exc
        rows = rows.drop(SOURCE_FILE, SOURCE_ROW, _BAD_LINE, strict=False)  # (names of ours, not fields of theirs)
        torn = pl.DataFrame({LINE: [b.line for b in bad], _BAD_LINE: [b.text for b in bad]},
                            schema={LINE: pl.Int64, _BAD_LINE: pl.String})
        frame = pl.concat([rows, torn], how="diagonal").sort(LINE) if bad else rows
        frames.append(frame.rename({LINE: SOURCE_ROW}).with_columns(pl.lit(str(path)).alias(SOURCE_FILE)))
    try:
        return pl.concat(frames, how="diagonal_relaxed").lazy()
    except pl.exceptions.PolarsError as exc:  # a field holding e.g. objects in one file and numbers in another
        raise IngestSchemaError.reading(f"the JSON-lines files {[p.name for p in paths[:3]]} disagree on a "
                                        "field's type", exc) from exc


def _scan(paths: list[Path], fmt: str) -> pl.LazyFrame:
    source = [str(p) for p in paths]
    if fmt == "jsonl":  # read line by line, so that one torn line costs only itself
        return _scan_jsonl(paths)
    if fmt == "parquet":
        lf = pl.scan_parquet(source, include_file_paths=SOURCE_FILE)
    else:
        # everything as text: a bad value then fails on its own row instead of failing the file
        lf = pl.scan_csv(source, infer_schema=False, include_file_paths=SOURCE_FILE)
    return lf.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over(SOURCE_FILE).alias(SOURCE_ROW))


def _compatible(target: pl.DataType, found: pl.DataType) -> bool:
    if found == pl.String or found == pl.Null:
        return True  # parsed row by row
    if target.is_integer():
        return found.is_integer()
    if target.is_float():
        return found.is_numeric()
    if isinstance(target, pl.Datetime) or target == pl.Date:
        return found.is_temporal() or found.is_numeric()
    if target == pl.Boolean:
        return found == pl.Boolean or found.is_integer()
    return target == pl.String or (isinstance(target, pl.Enum) and found in (pl.Categorical, pl.Enum))


def _parse(name: str, target: pl.DataType, found: pl.DataType, cfg: IngestConfig) -> pl.Expr:
    """Expression turning raw column ``name`` (of dtype ``found``) into ``target``; null where it fails."""
    col = pl.col(name)
    if isinstance(target, pl.Datetime):
        # naive timestamps are taken as UTC; aware ones are converted to UTC
        if found == pl.String:
            text = col.str.strip_chars()
            if cfg.timestamp_unit:
                parsed = pl.from_epoch(text.cast(pl.Int64, strict=False), time_unit=cfg.timestamp_unit)
                return parsed.dt.replace_time_zone("UTC").dt.cast_time_unit("us")
            return text.str.to_datetime(cfg.timestamp_format, time_zone="UTC", strict=False, time_unit="us")
        if found.is_numeric():
            parsed = pl.from_epoch(col.cast(pl.Int64, strict=False), time_unit=cfg.timestamp_unit or "s")
            return parsed.dt.replace_time_zone("UTC").dt.cast_time_unit("us")
        if found == pl.Date:
            return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        aware = col.dt.convert_time_zone("UTC") if found.time_zone else col.dt.replace_time_zone("UTC")
        return aware.dt.cast_time_unit("us")
    if target == pl.Date:
        if found == pl.String:
            return col.str.strip_chars().str.to_date(strict=False).alias(name)
        if isinstance(found, pl.Datetime):
            return col.dt.date().alias(name)
        return col.cast(pl.Date, strict=False).alias(name)
    if isinstance(target, pl.Enum):
        text = col.cast(pl.String)
        if cfg.event_types:
            text = text.replace(cfg.event_types)
        return text.str.strip_chars().cast(EventType, strict=False).alias(name)
    if target == pl.Boolean and found == pl.String:
        lowered = col.str.strip_chars().str.to_lowercase()
        return (pl.when(lowered.is_in(["true", "1", "yes", "t", "y"])).then(True)
                .when(lowered.is_in(["false", "0", "no", "f", "n"])).then(False)).alias(name)
    if found == pl.String and target != pl.String:
        col = col.str.strip_chars()
    return col.cast(target, strict=False).alias(name)


class ReadTable(NamedTuple):
    frame: pl.LazyFrame
    files: list[SourceFile]
    absent: frozenset[str]  # canonical columns the files do not have (null in ``frame``)
    extra: tuple[str, ...]  # the files' other columns, kept as they are (users and items: the shop's attributes)


def read_table(source: Path, table: Table, cfg: IngestConfig) -> ReadTable:
    """Read one canonical table from ``source`` with the column mapping applied.

    Returns a lazy frame with every canonical column parsed, its raw text in ``__raw_<column>``,
    ``source_file`` / ``source_row`` for tracing a row back (``source_row`` is the 0-based row in a Parquet or
    CSV file, the 1-based line number in a JSON-lines file) and ``raw_line``, the text of a JSON line that is not
    a JSON object (its row has every column null; null on every other row); of the users and items tables, the
    files' other columns too (any of them can be a schema ``attribute``); plus the files read, and which canonical
    columns they lack.
    Raises IngestSchemaError when a required column is missing, a column's type cannot hold ours, or a file
    cannot be read.
    """
    paths = find_files(source, getattr(cfg, table.name), table.name)
    lf = _scan(paths, _format(paths, cfg))
    try:
        found = lf.collect_schema()
    except pl.exceptions.PolarsError as exc:  # e.g. a file that is not Parquet
        raise IngestSchemaError.reading(f"{table.name}: cannot read {[p.name for p in paths[:3]]}", exc) from exc
    fields = [c for c in found if c not in (SOURCE_FILE, SOURCE_ROW, _BAD_LINE)]
    mapping = cfg.columns.get(table.name, {})
    unknown_targets = sorted(set(mapping) - set(table.names))
    if unknown_targets:
        raise IngestSchemaError(f"ingest.columns.{table.name}: {unknown_targets} are not columns of "
                                f"{table.name}; expected keys among {table.names}")
    theirs = {ours: mapping.get(ours, ours) for ours in table.names}
    missing = [f"{ours}" + (f" (mapped from {col!r})" if col != ours else "")
               for ours, col in theirs.items() if col not in fields and ours in table.required
               and not (ours == "event_type" and cfg.event_type)]
    if missing and fields:  # (JSON lines none of which could be read have no fields: each is quarantined)
        raise IngestSchemaError(
            f"{table.name}: required column(s) missing: {', '.join(missing)}; the files "
            f"({', '.join(p.name for p in paths[:3])}) have {fields}."
            f" Map their names with ingest.columns.{table.name}.")
    mistyped = [f"{ours} ({theirs[ours]!r} is {found[theirs[ours]]}, expected {target})"
                for ours, target in table.schema.items()
                if theirs[ours] in fields and not _compatible(target, found[theirs[ours]])]
    if mistyped:
        raise IngestSchemaError(f"{table.name}: column type(s) changed: {'; '.join(mistyped)}")
    mapped = set(theirs.values())
    extra = tuple(c for c in fields if table.name != "events" and c not in mapped and c not in table.names
                  and not c.startswith(RAW))
    exprs = [pl.col(SOURCE_FILE), pl.col(SOURCE_ROW),
             (pl.col(_BAD_LINE) if _BAD_LINE in found else pl.lit(None, dtype=pl.String)).alias(RAW_LINE)]
    for ours, target in table.schema.items():
        col = theirs[ours]
        if col in fields:
            exprs.append(_parse(col, target, found[col], cfg).alias(ours))
            exprs.append(pl.col(col).cast(pl.String).alias(RAW + ours))
        else:  # optional column the source does not have
            exprs.append(pl.lit(None, dtype=target).alias(ours))
            exprs.append(pl.lit(None, dtype=pl.String).alias(RAW + ours))
    absent = frozenset(ours for ours, col in theirs.items() if col not in fields)
    return ReadTable(lf.select(*exprs, *extra), describe_files(paths), absent, extra)

