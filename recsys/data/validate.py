"""Validate a shop export: schema checks, row checks with quarantine, and batch statistics checks.

* Schema checks (a required column missing, a column of the wrong type) stop the run before anything
  is written (`recsys.data.ingest.IngestSchemaError`).
* Row checks never drop a row silently: every bad row goes to ``quarantine/<table>.parquet`` with its
  raw values, where it came from and every reason it failed; a JSON line that could not be read at all
  (torn by a writer killed mid-append) as ``unparseable line``, with its text. Good rows are kept whatever
  their neighbours look like. Too many bad rows (``validation.max_bad_row_share``) stop the run.
* Exact copies of an event (the same ``event_id`` and the same value in every column, e.g. a retried
  ``/feedback`` written again) are one event: one is kept, the others are counted as ``deduplicated``.
  Events that share an ``event_id`` but differ are quarantined as ``duplicate event_id``.
* Batch statistics (volume per day, null rates, unseen categories) are compared with a reference
  profile — a previous validation report or dataset manifest — and reported; with
  ``on_stats_violation: fail`` a violation stops the run.

A stopped run leaves no partial output: everything is written to a temporary folder first.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from recsys.config import IngestConfig, ValidationConfig
from recsys.data.ingest import RAW, RAW_LINE, SOURCE_FILE, SOURCE_ROW, IngestSchemaError
from recsys.data.shop_export import read_export
from recsys.errors import RecsysError
from recsys.events import EVENTS, ITEMS, USERS, Table
from recsys.ids import MAPPED_IDS, id_map_frame, write_id_map
from recsys.io import atomic_dir

REASON = "reason"
UNPARSEABLE_LINE = "unparseable line"  # the reason for a JSON line that is not a JSON object
CATEGORICAL_COLUMNS = {"events": ["event_type"], "users": ["country", "device"], "items": ["category", "brand"]}
MAX_PROFILE_VALUES = 10_000


class ValidationFailed(RecsysError):
    """The batch is unusable (too many bad rows, or a statistics check set to fail)."""


@dataclass
class TableReport:
    """One table's counts: ``rows`` read (lines, for JSON lines) = ``good`` + ``bad`` (quarantined, by reason in
    ``reasons``) + ``deduplicated`` (exact copies of a kept or quarantined row, dropped)."""

    rows: int
    good: int
    bad: int
    reasons: dict[str, int]
    files: list[dict[str, Any]]
    deduplicated: int = 0

    @property
    def bad_share(self) -> float:
        return self.bad / self.rows if self.rows else 0.0


@dataclass
class ValidationReport:
    source: str
    validated_at: str
    tables: dict[str, TableReport]
    profile: dict[str, Any]
    stats_checks: list[dict[str, Any]] = field(default_factory=list)
    reference: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)  # id column -> integer | text (`recsys.ids`)
    derived: dict[str, list[str]] = field(default_factory=dict)  # table -> the columns derived (`recsys.data.derive`)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name, t in self.tables.items():
            out["tables"][name]["bad_share"] = t.bad_share
        return out

    def summary(self) -> str:
        lines = [f"validation of {self.source}"]
        for name, t in self.tables.items():
            lines.append(f"  {name:<7} {t.rows:>12,} rows  {t.good:>12,} good  {t.bad:>9,} quarantined "
                         f"({t.bad_share:.2%})" + (f"  {t.deduplicated:,} deduplicated" if t.deduplicated else ""))
            for reason, n in sorted(t.reasons.items(), key=lambda kv: -kv[1]):
                lines.append(f"            {n:>12,}  {reason}")
        if self.reference:
            lines.append(f"  statistics vs reference {self.reference}:")
            if not self.stats_checks:
                lines.append("    all within bounds")
            for check in self.stats_checks:
                lines.append(f"    {check['severity'].upper()}: {check['message']}")
        return "\n".join(lines)


def _reasons(checks: list[tuple[pl.Expr, str]]) -> pl.Expr:
    """One string per row: every failed check's reason, '; '-separated, or null for a good row."""
    parts = [pl.when(cond).then(pl.lit(reason)) for cond, reason in checks]
    joined = pl.concat_str(parts, separator="; ", ignore_nulls=True)
    return pl.when(joined != "").then(joined).alias(REASON)


def _parse_checks(table: Table) -> list[tuple[pl.Expr, str]]:
    checks = []
    for col in table.columns:
        raw = pl.col(RAW + col.name)
        missing = raw.is_null() | (raw.str.strip_chars() == "")
        if col.required:
            checks.append((missing, f"missing {col.name}"))
        unparsed = "unknown" if isinstance(col.dtype, pl.Enum) else "unparseable"
        checks.append((~missing & pl.col(col.name).is_null(), f"{unparsed} {col.name}"))
    return checks


def _user_checks(cfg: ValidationConfig, now: datetime) -> list[tuple[pl.Expr, str]]:
    opened = date.fromisoformat(cfg.shop_opened)
    return [
        (pl.col("user_id").is_not_null() & ~pl.col("user_id").is_first_distinct(), "duplicate user_id"),
        (pl.col("signup_date") > now.date(), "signup_date in the future"),
        (pl.col("signup_date") < opened, "signup_date before the shop opened"),
    ]


def _item_checks(cfg: ValidationConfig) -> list[tuple[pl.Expr, str]]:
    checks = [(pl.col("item_id").is_not_null() & ~pl.col("item_id").is_first_distinct(), "duplicate item_id")]
    if cfg.min_price is not None:
        checks.append((pl.col("price") < cfg.min_price, f"price below validation.min_price ({cfg.min_price:g})"))
    return checks


def _event_checks(cfg: ValidationConfig, now: datetime, users: pl.Series,
                  items: pl.Series) -> list[tuple[pl.Expr, str]]:
    opened = datetime.fromisoformat(cfg.shop_opened).replace(tzinfo=UTC)
    latest = now + timedelta(minutes=cfg.future_tolerance_minutes)
    return [
        (pl.col("event_id").is_not_null() & ~pl.col("event_id").is_first_distinct(), "duplicate event_id"),
        (pl.col("timestamp") > latest, "timestamp in the future"),
        (pl.col("timestamp") < opened, "timestamp before the shop opened"),
        (pl.col("user_id").is_not_null() & ~pl.col("user_id").is_in(users.implode()), "unknown user_id"),
        (pl.col("item_id").is_not_null() & ~pl.col("item_id").is_in(items.implode()), "unknown item_id"),
        (pl.col("position") < 0, "negative position"),
    ]


def event_row_problems(events: pl.DataFrame, cfg: ValidationConfig, now: datetime, items: pl.Series
                       ) -> list[str | None]:
    """Batch ingest's row checks on events already parsed (``POST /events``): per row, why validation would
    quarantine it ('; '-joined), or None. The user is not looked up in a users table: a live event may be a new
    shopper's first."""
    checks = [(cond, why) for cond, why in _event_checks(cfg, now, pl.Series([], dtype=pl.Int64), items)
              if why != "unknown user_id"]
    return events.select(_reasons(checks)).to_series().to_list()


def _exact_copies(table: Table) -> pl.Expr:
    """True on a row that repeats an earlier row with the same key: every column's value the same but the time,
    and where a value (the time too) did not parse, the same raw text (rows without a key are never copies).

    The time is left out: an event the app received twice (a client's retry, perhaps to another replica) carries
    the same ``event_id`` and the same content, but each copy the time it was received; the first is kept."""
    values = [pl.col(c) for c in table.names if c != "timestamp"]
    unparsed = [pl.when(pl.col(c).is_null()).then(pl.col(RAW + c)).alias(RAW + c) for c in table.names]
    return pl.col(table.key).is_not_null() & ~pl.struct(*values, *unparsed).is_first_distinct()


def _collect(lf: pl.LazyFrame, table: Table) -> pl.DataFrame:
    try:
        return lf.collect()
    except pl.exceptions.PolarsError as exc:  # e.g. a CSV line with too many fields
        raise IngestSchemaError.reading(f"{table.name}: the files cannot be read", exc) from exc


def _split(rows: pl.DataFrame, table: Table, checks: list[tuple[pl.Expr, str]], dedupe: bool = False,
           extra: Sequence[str] = ()) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """(good rows, quarantined rows, exact copies dropped: only with ``dedupe``); ``extra`` columns ride along."""
    read = rows.height
    if dedupe:
        rows = rows.filter(~_exact_copies(table))
    unreadable = pl.col(RAW_LINE).is_not_null()  # a torn JSON line: its columns are null, but not "missing"
    marked = rows.with_columns(pl.when(unreadable).then(pl.lit(UNPARSEABLE_LINE)).otherwise(_reasons(checks))
                               .alias(REASON))
    good = marked.filter(pl.col(REASON).is_null()).select(*table.names, *extra)
    bad = marked.filter(pl.col(REASON).is_not_null()).select(
        SOURCE_FILE, SOURCE_ROW, REASON, *[pl.col(RAW + c).alias(c) for c in table.names],
        *[pl.col(c).cast(pl.String) for c in extra], RAW_LINE)
    return good, bad, read - rows.height


def _count_reasons(bad: pl.DataFrame) -> dict[str, int]:
    if bad.is_empty():
        return {}
    exploded = bad.select(pl.col(REASON).str.split("; ")).explode(REASON)
    return dict(exploded.group_by(REASON).len().sort(REASON).iter_rows())


def profile_tables(events: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame) -> dict[str, Any]:
    """Batch statistics used as the reference for the next batch's checks."""
    out: dict[str, Any] = {}
    for name, df in (("events", events), ("users", users), ("items", items)):
        prof: dict[str, Any] = {"rows": df.height, "null_rate": {}, "values": {}}
        if df.height:
            prof["null_rate"] = {c: v / df.height for c, v in df.null_count().row(0, named=True).items()}
        for col in CATEGORICAL_COLUMNS[name]:
            values = df[col].cast(pl.String).drop_nulls().unique().sort()
            prof["values"][col] = values.to_list()[:MAX_PROFILE_VALUES]
            prof.setdefault("values_truncated", {})[col] = values.len() > MAX_PROFILE_VALUES
        out[name] = prof
    if events.height:
        lo, hi = events["timestamp"].min(), events["timestamp"].max()
        days = max((hi - lo).total_seconds() / 86400, 1.0)  # type: ignore[operator]
        out["events"].update(start=lo.isoformat(), end=hi.isoformat(), days=days,  # type: ignore[union-attr]
                             events_per_day=events.height / days)
    return out


def compare_profiles(current: dict[str, Any], reference: dict[str, Any], cfg: ValidationConfig,
                     frames: dict[str, pl.DataFrame]) -> list[dict[str, Any]]:
    """Statistics checks of this batch against a reference profile; one entry per violation."""
    severity = cfg.on_stats_violation
    found: list[dict[str, Any]] = []
    ref_rate, cur_rate = reference["events"].get("events_per_day"), current["events"].get("events_per_day")
    if ref_rate and cur_rate is not None and cur_rate < (1 - cfg.max_volume_drop) * ref_rate:
        found.append({"check": "volume_drop", "table": "events", "severity": severity,
                      "message": f"events per day fell to {cur_rate:,.0f} from {ref_rate:,.0f} "
                                 f"(more than {cfg.max_volume_drop:.0%} down)"})
    for name in ("events", "users", "items"):
        for col, rate in current[name]["null_rate"].items():
            before = reference[name]["null_rate"].get(col, 0.0)
            if rate - before > cfg.max_null_rate_increase:
                found.append({"check": "null_rate_jump", "table": name, "column": col, "severity": severity,
                              "message": f"{name}.{col} null rate rose to {rate:.1%} from {before:.1%}"})
        for col in CATEGORICAL_COLUMNS[name]:
            known = reference[name]["values"].get(col)
            if known is None or reference[name].get("values_truncated", {}).get(col):
                continue
            df = frames[name]
            if not df.height:
                continue
            new_rows = df.filter(~pl.col(col).cast(pl.String).is_in(known) & pl.col(col).is_not_null())
            share = new_rows.height / df.height
            if share > cfg.max_new_category_share:
                examples = new_rows[col].cast(pl.String).unique().sort().head(5).to_list()
                found.append({"check": "new_categories", "table": name, "column": col, "severity": severity,
                              "message": f"{share:.1%} of {name} rows have {col} values the reference never "
                                         f"saw (e.g. {examples})"})
    return found


def load_reference(path: str | Path) -> dict[str, Any]:
    """The batch profile inside a validation report.json or a dataset manifest.json."""
    data = json.loads(Path(path).read_text())
    if "profile" in data and "events" in data["profile"]:
        return data["profile"]
    if "validation" in data and "profile" in data["validation"]:
        return data["validation"]["profile"]
    raise RecsysError(f"{path}: neither a validation report nor a dataset manifest (no batch profile found)")


def validate(source: str | Path, out: str | Path, cfg: ValidationConfig, ingest: IngestConfig,
             reference: str | Path | None = None, now: datetime | None = None,
             extra_events: Sequence[tuple[str | Path, IngestConfig]] = ()) -> ValidationReport:
    """Validate the export under ``source`` and write clean tables, quarantine and report to ``out``.

    ``extra_events``: more event sources (folder, how to read it), checked with the export's events, e.g. the
    serving app's feedback log (`recsys.eventlog.feedback.FEEDBACK_INGEST`).

    Raises IngestSchemaError (schema) or ValidationFailed (too many bad rows / failed statistics);
    in both cases ``out`` is left untouched.
    """
    source, out = Path(source), Path(out)
    now = now or datetime.now(UTC)
    read = read_export(source, ingest, extra_events)
    users_rows, items_rows = _collect(read.users, USERS), _collect(read.items, ITEMS)
    users, bad_users, _ = _split(users_rows, USERS, _parse_checks(USERS) + _user_checks(cfg, now),
                                 extra=read.extra["users"])
    items, bad_items, _ = _split(items_rows.with_columns(pl.col("available").fill_null(True)), ITEMS,
                                 _parse_checks(ITEMS) + _item_checks(cfg), extra=read.extra["items"])
    # an event is kept when its user / item is in the tables at all, even if that row itself was
    # quarantined: a bad attribute row must not cost the good events that mention it
    events, bad_events, copies = _split(_collect(read.events, EVENTS), EVENTS, _parse_checks(EVENTS) + _event_checks(
        cfg, now, users_rows["user_id"].drop_nulls(), items_rows["item_id"].drop_nulls()), dedupe=True)
    events = events.sort("timestamp", "event_id")

    tables = {}
    for name, good, bad, dropped in (("events", events, bad_events, copies), ("users", users, bad_users, 0),
                                     ("items", items, bad_items, 0)):
        files = read.files[name]
        tables[name] = TableReport(rows=good.height + bad.height + dropped, good=good.height, bad=bad.height,
                                   reasons=_count_reasons(bad), files=[f.to_dict() for f in files],
                                   deduplicated=dropped)
    over = [f"{name}: {t.bad:,} of {t.rows:,} rows bad ({t.bad_share:.1%}; most common: "
            f"{max(t.reasons, key=t.reasons.__getitem__)})"
            for name, t in tables.items() if t.bad_share > cfg.max_bad_row_share]
    if over:
        raise ValidationFailed("too many bad rows (limit validation.max_bad_row_share = "
                               f"{cfg.max_bad_row_share:.1%}): " + "; ".join(over) + ". Nothing was written.")

    profile = profile_tables(events, users, items)
    id_maps = {c: id_map_frame(rows[RAW + c], c) for c, rows in (("user_id", users_rows), ("item_id", items_rows))
               if read.kinds[c] == "text"}
    report = ValidationReport(source=str(source), validated_at=now.isoformat(), tables=tables, profile=profile,
                              reference=str(reference) if reference else None, config=asdict(cfg),
                              ids=read.kinds, derived=read.derived)
    if reference:
        report.stats_checks = compare_profiles(profile, load_reference(reference), cfg,
                                               {"events": events, "users": users, "items": items})
        failed = [c["message"] for c in report.stats_checks if c["severity"] == "fail"]
        if failed:
            raise ValidationFailed("batch statistics checks failed against the reference: "
                                   + "; ".join(failed) + ". Nothing was written.")

    with atomic_dir(out) as tmp:
        (tmp / "quarantine").mkdir()
        events.write_parquet(tmp / "events.parquet")
        users.write_parquet(tmp / "users.parquet")
        items.write_parquet(tmp / "items.parquet")
        for name, bad in (("events", bad_events), ("users", bad_users), ("items", bad_items)):
            bad.write_parquet(tmp / "quarantine" / f"{name}.parquet")
        for column in MAPPED_IDS:
            write_id_map(tmp, column, id_maps.get(column))
        (tmp / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
        (tmp / "report.txt").write_text(report.summary() + "\n")
    return report
