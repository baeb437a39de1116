"""`recsys data init`: read a sample of a shop's files and write the data config that reads them.

It guesses, from the names and the values of a sample of rows:

* which file is the events log (a time, a user and an item column), the items and the users table (one row per
  item / user id);
* which of their columns are ours (by the names shops and public logs use: ``visitorid``, ``sku``, ``asin``,
  ``movieId``, ``reviewerID``...), and for each guess whether it was sure (the name) or not (the values only);
* the timestamp's format (ISO text, a strptime format, epoch seconds / milliseconds / microseconds);
* the event names and how they map to ours (``transaction`` → purchase, ``addtocart`` → add_to_cart); a log with
  no event column (ratings, reviews) is read as views;
* what is missing and will be derived (`recsys.data.derive`), which schema features the data can feed and which
  get their defaults.

What it wrote is a starting point: the file's comments say what to check before `recsys data validate`.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from recsys.data.ingest import FORMATS
from recsys.errors import RecsysError
from recsys.events import EVENT_TYPES, EVENTS, ITEMS, USERS, Table
from recsys.schema import FeatureSchema

SAMPLE_ROWS = 20_000
# names shops and public logs give our columns (lower case, without "_" / "-" / " ")
NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "events": {
        "user_id": ("userid", "user", "visitorid", "visitor", "customerid", "customer", "reviewerid", "uid",
                    "clientid", "memberid", "accountid", "shopperid"),
        "item_id": ("itemid", "item", "productid", "product", "sku", "asin", "movieid", "articleid", "offerid",
                    "pid", "iid", "goodsid"),
        "timestamp": ("timestamp", "ts", "time", "eventtime", "datetime", "date", "createdat", "unixreviewtime",
                      "eventtimestamp", "occurredat", "when"),
        "event_type": ("eventtype", "event", "action", "type", "interaction", "behavior", "behaviour",
                       "eventname", "interactiontype"),
        "session_id": ("sessionid", "session", "visitid", "visit"),
        "request_id": ("requestid", "impressionid", "slateid", "listid", "recid", "impression", "request"),
        "position": ("position", "pos", "slot", "rank", "index"),
        "event_id": ("eventid", "id", "rowid"),
    },
    "items": {
        "item_id": ("itemid", "item", "productid", "product", "sku", "asin", "movieid", "articleid", "offerid",
                    "pid", "iid", "id"),
        "category": ("category", "categoryid", "cat", "dept", "department", "genre", "genres", "maincat",
                     "categories", "productcategory", "section"),
        "brand": ("brand", "maker", "manufacturer", "vendor", "label"),
        "price": ("price", "cost", "amount", "unitprice", "listprice"),
        "available": ("available", "instock", "availability", "active", "sellable"),
    },
    "users": {
        "user_id": ("userid", "user", "visitorid", "customerid", "customer", "reviewerid", "uid", "clientid",
                    "memberid", "accountid", "id"),
        "signup_date": ("signupdate", "signup", "created", "createdat", "registered", "registrationdate",
                        "joindate", "joined", "since"),
        "country": ("country", "countrycode", "region", "market"),
        "device": ("device", "platform", "devicetype", "os"),
    },
}
EVENT_NAMES = {  # a shop's event name (lower case, without separators) -> ours
    "impression": ("impression", "impressions", "shown", "show", "impr", "display", "exposure", "served"),
    "view": ("view", "views", "pageview", "pdp", "detail", "productview", "viewed", "viewitem"),
    "click": ("click", "clicks", "tap", "clicked"),
    "add_to_cart": ("addtocart", "cart", "basket", "addtobasket", "add", "carted"),
    "purchase": ("purchase", "transaction", "buy", "order", "checkout", "bought", "sale", "purchased"),
}
RATING_NAMES = ("rating", "overall", "stars", "score")
TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%d/%m/%Y %H:%M:%S", "%m/%d/%Y %H:%M:%S", "%Y/%m/%d %H:%M:%S",
                "%d.%m.%Y %H:%M:%S", "%Y-%m-%d")


class InitError(RecsysError, ValueError):
    """The files cannot be read, or hold nothing that looks like an events log."""


def _key(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", name.lower())


@dataclass
class SampledFile:
    path: Path
    pattern: str  # relative to the source folder
    frame: pl.DataFrame  # every column as text
    rows: int  # in the sample

    def column(self, name: str) -> pl.Series:
        """The sampled values of ``name``: stripped text, no nulls or empty strings."""
        values = self.frame[name].drop_nulls().cast(pl.String).str.strip_chars()
        return values.filter(values != "")


@dataclass
class Starter:
    """What was guessed: the config, and the notes for the person who checks it."""

    config: dict[str, Any]
    unsure: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    features: dict[str, list[str]] = field(default_factory=dict)  # fed | default
    detected: list[str] = field(default_factory=list)


def _as_text(frame: pl.DataFrame, name: str) -> pl.Expr:
    """Column ``name`` as text: a list's items joined by "|", a struct as its JSON."""
    dtype = frame.schema[name]
    if isinstance(dtype, pl.List):
        return pl.col(name).cast(pl.List(pl.String), strict=False).list.join("|")
    if isinstance(dtype, pl.Struct):
        return pl.col(name).struct.json_encode()
    return pl.col(name).cast(pl.String)


def _read_sample(path: Path) -> pl.DataFrame:
    """The first `SAMPLE_ROWS` rows of ``path``, every column as text."""
    fmt = FORMATS.get(path.suffix.lower())
    try:
        if fmt == "csv":
            frame = pl.read_csv(path, infer_schema=False, n_rows=SAMPLE_ROWS)
        elif fmt == "parquet":
            frame = pl.scan_parquet(path).head(SAMPLE_ROWS).collect()
        else:
            with open(path, "rb") as fh:
                lines = b"".join(itertools.islice(fh, SAMPLE_ROWS))
            frame = pl.read_ndjson(lines, infer_schema_length=None)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InitError(f"{path}: cannot be read as {fmt}: {str(exc).splitlines()[0]}") from exc
    return frame.select([_as_text(frame, c) for c in frame.columns])


def sample_files(source: Path) -> list[SampledFile]:
    """A sample of every data file under ``source`` (two levels deep); the parts of one folder are one table."""
    found: dict[str, list[Path]] = {}
    for path in sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in FORMATS
                       and len(p.relative_to(source).parts) <= 2 and not p.name.startswith(".")):
        rel = path.relative_to(source)
        pattern = f"{rel.parent}/*{path.suffix}" if len(rel.parts) == 2 else str(rel)
        found.setdefault(pattern, []).append(path)
    if not found:
        raise InitError(f"{source}: no data files ({', '.join(sorted(FORMATS))}) found")
    return [SampledFile(paths[0], pattern, frame := _read_sample(paths[0]), frame.height)
            for pattern, paths in found.items()]


def _integers(values: pl.Series) -> bool:
    return values.len() > 0 and bool(values.str.contains(r"^-?[0-9]+$").all())


def _numbers(values: pl.Series) -> bool:
    return values.len() > 0 and values.cast(pl.Float64, strict=False).null_count() == 0


def timestamp_format(values: pl.Series) -> dict[str, Any] | None:
    """How ``values`` (text) are times: {} for ISO 8601, {timestamp_unit} for epoch numbers, {timestamp_format}
    for a strptime format; None when they are not times."""
    values = values.head(2_000)
    if values.len() == 0:
        return None
    if _numbers(values):
        numbers = values.cast(pl.Float64)
        median = float(numbers.median())  # type: ignore[arg-type]
        for unit, scale in (("s", 1), ("ms", 1e3), ("us", 1e6)):
            if 6e8 * scale < median < 4e9 * scale:  # 1989 .. 2096
                return {"timestamp_unit": unit}
        return None
    iso = values.str.contains(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}").all()
    if iso and values.str.to_datetime(strict=False, time_zone="UTC", time_unit="us").null_count() == 0:
        return {}
    formats = matching_formats(values)
    return {"timestamp_format": formats[0]} if formats else None


def matching_formats(values: pl.Series) -> list[str]:
    """The formats of `TIME_FORMATS` every one of ``values`` parses with (more than one: day and month may be
    swapped, "01/09/2026")."""
    return [fmt for fmt in TIME_FORMATS if values.str.to_datetime(fmt, strict=False).null_count() == 0]


def _whole_column(source: Path, sample: SampledFile, name: str) -> pl.Series:
    """Column ``name`` of every file of the sampled table (only that column is read), as stripped text."""
    paths = [str(p) for p in sorted(source.glob(sample.pattern))]
    fmt = FORMATS[sample.path.suffix.lower()]
    try:
        if fmt == "csv":
            frame = pl.scan_csv(paths, infer_schema=False).select(name).collect()
        elif fmt == "parquet":
            frame = pl.scan_parquet(paths).select(pl.col(name).cast(pl.String)).collect()
        else:
            frame = pl.scan_ndjson(paths, infer_schema_length=None).select(pl.col(name).cast(pl.String)).collect()
    except pl.exceptions.PolarsError:  # (a file the sample did not reach cannot be read: validation will say so)
        return sample.column(name)
    values = frame[name].drop_nulls().str.strip_chars()
    return values.filter(values != "")


def _span_days(values: pl.Series, times: dict[str, Any]) -> float | None:
    if "timestamp_unit" in times:
        parsed = pl.from_epoch(values.cast(pl.Float64).cast(pl.Int64), time_unit=times["timestamp_unit"])
    else:
        parsed = values.str.to_datetime(times.get("timestamp_format"), strict=False, time_unit="us",
                                        **({} if "timestamp_format" in times else {"time_zone": "UTC"}))
    parsed = parsed.drop_nulls()
    return (parsed.max() - parsed.min()).total_seconds() / 86400 if parsed.len() else None  # type: ignore[operator]


def _guess_columns(sample: SampledFile, table: Table) -> dict[str, str]:
    """Our column -> theirs, by name, each of their columns used once."""
    names = NAMES[table.name]
    taken: set[str] = set()
    mapping: dict[str, str] = {}
    for ours in [c.name for c in table.columns if c.name in names]:
        for theirs in sample.frame.columns:
            if theirs not in taken and _key(theirs) in ((_key(ours),) + names[ours]):
                mapping[ours] = theirs
                taken.add(theirs)
                break
    return mapping


def _events_score(sample: SampledFile) -> int:
    guess = _guess_columns(sample, EVENTS)
    return sum(c in guess for c in ("user_id", "item_id", "timestamp")) * 10 + len(guess)


def _event_names(values: pl.Series, starter: Starter) -> dict[str, str]:
    mapping = {}
    for name in values.unique().sort().to_list()[:50]:
        ours = next((t for t, synonyms in EVENT_NAMES.items() if _key(name) in synonyms), None)
        if ours is None:
            starter.unsure.append(f"event name {name!r} matches none of ours ({', '.join(EVENT_TYPES)}): map it "
                                  "in ingest.event_types, or its rows are quarantined as unknown")
        elif ours != name:
            mapping[name] = ours
    return mapping


def describe_column(sample: SampledFile, name: str) -> str:
    """``name``: what its sampled values look like, and the encoding that suits them."""
    values = sample.column(name)
    if not values.len():
        return f"{name} (empty)"
    distinct = values.n_unique()
    if _numbers(values) and distinct > 20:
        numbers = values.cast(pl.Float64)
        return f"{name} (numbers {numbers.min():g}..{numbers.max():g}: dense or buckets)"
    return f"{name} ({distinct:,} distinct values in the sample: categorical, vocab)"


def _table_key(sample: SampledFile, table: Table) -> str | None:
    """Their column that is ``table``'s key: named like it and one row per value."""
    mapping = _guess_columns(sample, table)
    key = mapping.get(table.key)
    if key is None:
        return None
    values = sample.column(key)
    return key if values.len() and values.n_unique() == values.len() else None


def starter_config(source: Path, schema: FeatureSchema) -> Starter:
    """Guess the data config that reads the shop files under ``source``."""
    samples = sample_files(source)
    events = max(samples, key=_events_score)
    starter = Starter({})
    ingest: dict[str, Any] = {"events": events.pattern}
    columns = _guess_columns(events, EVENTS)
    for needed in ("user_id", "item_id", "timestamp"):
        if needed not in columns:
            raise InitError(f"{events.path}: no column looks like our {needed} (its columns: {events.frame.columns});"
                            f" name it in ingest.columns.events.{needed} of a config written by hand")
    starter.detected.append(f"events: {events.pattern} ({len(events.frame.columns)} columns, {events.rows:,} rows "
                            "sampled)")
    times = timestamp_format(events.column(columns["timestamp"]))
    if times is None:
        starter.unsure.append(f"events.{columns['timestamp']}: not a time format we know; set "
                              "ingest.timestamp_format (strptime) or ingest.timestamp_unit (s, ms, us)")
    else:
        ingest.update(times)
        stamps = events.column(columns["timestamp"]).head(2_000)
        formats = matching_formats(stamps) if "timestamp_format" in times else []
        if len(formats) > 1:
            starter.unsure.append(f"events.{columns['timestamp']}: every sampled time reads as "
                                  f"{' and as '.join(formats)}; {formats[0]} was chosen (ingest.timestamp_format)")
        starter.detected.append("timestamps: " + (f"epoch {times['timestamp_unit']}" if "timestamp_unit" in times
                                                  else times.get("timestamp_format", "ISO 8601")))
    if times is not None:  # size the splits to the log's span (its time column read whole)
        span = _span_days(_whole_column(source, events, columns["timestamp"]), times)
        if span is not None and span < 28:
            days = max(1, int(span) // 7)
            starter.config["build"] = {"val_days": days, "test_days": days}
            starter.detected.append(f"the events span {span:.1f} days: validation and test get {days} day(s) each "
                                    "(build.val_days, build.test_days; the default 7 each suits 4 weeks or more)")
    if "event_type" in columns:
        ingest["event_types"] = _event_names(events.column(columns["event_type"]), starter)
    else:
        rating = next((c for c in events.frame.columns if _key(c) in RATING_NAMES), None)
        ingest["event_type"] = "view"
        starter.unsure.append("no event type column" + (f" (a column {rating!r}: ratings or reviews)" if rating
                                                          else "") + ": every row is read as a view "
                              "(ingest.event_type; purchase suits a log of orders or reviews of bought items)")
    if "position" in columns and "request_id" not in columns:
        del columns["position"]  # a slot means nothing without the list it was in
    has: dict[str, set[str]] = {"users": set(), "items": set()}  # columns each table has, by our names or theirs
    for name, ours in (("items", ITEMS), ("users", USERS)):
        table = next((s for s in samples if s is not events and _table_key(s, ours)), None)
        if table is None:
            ingest[name] = None
            starter.missing.append(f"no {name} table: one row per {ours.key} of the events is derived"
                                   + (", attributes unknown" if name == "items" else ", signup at the first event"))
            continue
        ingest[name] = table.pattern
        mapped = _guess_columns(table, ours)
        has[name] = set(mapped) | set(table.frame.columns)
        ingest.setdefault("columns", {})[name] = {k: v for k, v in mapped.items() if k != v}
        own = [describe_column(table, c) for c in table.frame.columns if c not in mapped.values()]
        starter.detected.append(f"{name}: {table.pattern}, key {mapped[ours.key]!r}"
                                + (f"; the shop's own columns, each a schema `attribute` if wanted (compute: {{op: "
                                   f"attribute, table: {name}, column: ...}}): {'; '.join(own)}" if own else ""))
        for c in ours.columns:
            if c.name not in mapped and c.name != ours.key:
                starter.missing.append(f"{name}.{c.name}" + (f": derived, {c.derived}" if c.derived else
                                                             ": absent; features on it get their defaults"))
        if name == "items" and "price" in mapped and (
                prices := table.column(mapped["price"]).cast(pl.Float64, strict=False)).len() and prices.min() < 0:
            starter.config["validation"] = {"min_price": None}
            starter.detected.append(f"items.{mapped['price']}: negative values (a shop's own scaling): "
                                    "validation.min_price set to null")
    ingest.setdefault("columns", {})["events"] = {k: v for k, v in columns.items() if k != v}
    for c in EVENTS.columns:
        if c.name not in columns and c.name != "event_type":
            starter.missing.append(f"events.{c.name}: " + (f"derived, {c.derived}" if c.derived else
                                                           "absent (optional)"))
    for column, values in ((c, events.column(columns[c])) for c in ("user_id", "item_id")):
        kind = "integer" if _integers(values) and not values.str.contains(r"^-?0[0-9]").any() else "text"
        starter.detected.append(f"{column}: {kind} ids (e.g. {values.head(3).to_list()})")
    starter.config = {"ingest": ingest, **starter.config}
    starter.features = feedable(schema, ingest, events, columns, has)
    if "impression" not in _event_types(ingest, events, columns):
        starter.missing.append("impressions: no lists shown, so no ranking examples and no ranker to train; "
                               "train the two-tower only and serve its order (recsys serve --set ranker_model=)")
    return starter


def feedable(schema: FeatureSchema, ingest: dict[str, Any], events: SampledFile, columns: dict[str, str],
             has: dict[str, set[str]]) -> dict[str, list[str]]:
    """Which schema features the sampled data can feed (``fed``) and which get their defaults (``default``):
    an attribute needs its column, an event-based feature its event types, position and the label impressions."""
    types = _event_types(ingest, events, columns)
    out: dict[str, list[str]] = {"fed": [], "default": []}
    for f in schema.features:
        if f.op == "attribute":
            ok = f.params["column"] in has[f.params["table"]]
        elif "event_types" in f.params:
            ok = bool(types & set(f.params["event_types"]))
        elif f.op == "item_rate":
            ok = bool(types & set(f.params["numerator"])) and bool(types & set(f.params["denominator"]))
        elif f.op in ("position", "clicked"):
            ok = "impression" in types
        else:
            ok = True
        out["fed" if ok else "default"].append(f.name)
    return out


def _event_types(ingest: dict[str, Any], events: SampledFile, columns: dict[str, str]) -> set[str]:
    """Our event types the sampled log holds, as the config maps them."""
    if "event_type" in columns:
        return {ingest["event_types"].get(n, n) for n in events.column(columns["event_type"]).unique().to_list()}
    return {ingest["event_type"]}


def render(starter: Starter, source: Path) -> str:
    """The config as YAML, with what to check as comments above it."""
    lines = [f"# Starter data config for the shop files under {source}, written by `recsys data init`.",
             "# Check it, then: recsys data validate --config THIS_FILE --source " + str(source), "#"]
    for title, notes in (("detected", starter.detected), ("unsure — check these", starter.unsure),
                         ("missing", starter.missing)):
        if notes:
            lines.append(f"# {title}:")
            lines += [f"#   - {n}" for n in notes]
    if starter.features:
        lines.append(f"# schema features the data feeds: {', '.join(starter.features['fed']) or 'none'}")
        lines.append(f"# schema features left at their defaults: {', '.join(starter.features['default']) or 'none'}")
    return "\n".join(lines) + "\n" + yaml.safe_dump(starter.config, sort_keys=False)
