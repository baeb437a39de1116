"""Validation: every bad-row category is quarantined with its reason, good rows survive, hard failures
write nothing, and batch statistics are compared with a reference."""

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from recsys.config import IngestConfig, ValidationConfig
from recsys.data.ingest import IngestSchemaError
from recsys.data.validate import ValidationFailed, validate

NOW = datetime(2026, 11, 27, tzinfo=UTC)


def _read(root):
    return (pl.read_parquet(root / "events" / "*.parquet"), pl.read_parquet(root / "users.parquet"),
            pl.read_parquet(root / "items.parquet"))


def _write(root, events, users, items):
    (root / "events").mkdir(parents=True)
    events.write_parquet(root / "events" / "part-00000.parquet")
    users.write_parquet(root / "users.parquet")
    items.write_parquet(root / "items.parquet")
    return root


def _run(source, out, **cfg):
    return validate(source, out, ValidationConfig(**cfg), IngestConfig(), now=NOW)


BAD_EVENTS = {
    "missing user_id": lambda r: r.with_columns(pl.lit(None, pl.Int64).alias("user_id")),
    "unknown event_type": lambda r: r.with_columns(pl.lit("like").alias("event_type")),
    "timestamp in the future": lambda r: r.with_columns(pl.lit(NOW + timedelta(days=2)).alias("timestamp")),
    "timestamp before the shop opened": lambda r: r.with_columns(
        pl.lit(datetime(2019, 5, 1, tzinfo=UTC)).alias("timestamp")),
    "duplicate event_id": lambda r: r.with_columns(pl.col("session_id") + 1),  # an existing id, another event
    "unknown user_id": lambda r: r.with_columns(pl.lit(987654321).alias("user_id")),
    "unknown item_id": lambda r: r.with_columns(pl.lit(987654321).alias("item_id")),
    "negative position": lambda r: r.with_columns(pl.lit(-3, pl.Int32).alias("position")),
}


@pytest.fixture()
def dirty(tmp_path, tiny_raw):
    events, users, items = _read(tiny_raw)
    base = events.filter(pl.col("event_type") == "impression").head(len(BAD_EVENTS))
    next_id = events["event_id"].max() + 1
    bad = []
    for i, (reason, make) in enumerate(BAD_EVENTS.items()):
        row = make(base.slice(i, 1))
        if reason != "duplicate event_id":
            row = row.with_columns(pl.lit(next_id + i).alias("event_id"))
        bad.append(row.select(events.columns).cast(events.schema))
    exact_copy = events.slice(3, 1)  # a retry: the same event again, which is no bad row
    dirty_events = pl.concat([events, *bad, exact_copy])
    dup_user = users.head(1)
    future_user = users.slice(1, 1).with_columns(pl.lit(987654300, pl.Int64).alias("user_id"),
                                                  (pl.lit(NOW.date()) + timedelta(days=30)).alias("signup_date"))
    bad_item = items.head(1).with_columns(pl.lit(-5.0).alias("price"))  # its events must survive
    dirty_items = pl.concat([items.slice(1), bad_item])
    source = _write(tmp_path / "dirty", dirty_events, pl.concat([users, dup_user, future_user]), dirty_items)
    return source, events, users, items


def test_every_bad_row_is_quarantined_with_its_reason_and_good_rows_survive(tmp_path, dirty):
    source, events, users, items = dirty
    report = _run(source, tmp_path / "out")
    out = tmp_path / "out"
    quarantine = pl.read_parquet(out / "quarantine" / "events.parquet")
    assert sorted(quarantine["reason"]) == sorted(BAD_EVENTS)
    assert report.tables["events"].reasons == dict.fromkeys(BAD_EVENTS, 1)
    assert report.tables["events"].deduplicated == 1  # the exact copy: dropped, counted, not quarantined
    assert report.tables["events"].rows == events.height + len(BAD_EVENTS) + 1
    assert report.tables["users"].deduplicated == report.tables["items"].deduplicated == 0
    # the quarantine keeps the raw values and says where each row came from
    assert quarantine.filter(pl.col("reason") == "unknown event_type")["event_type"].to_list() == ["like"]
    assert quarantine["source_file"].str.ends_with("part-00000.parquet").all()
    assert (quarantine["source_row"] >= events.height).all()
    # good rows are never lost: every original event survives, including those of the bad item row
    good = pl.read_parquet(out / "events.parquet")
    assert good.height == events.height
    assert good["event_id"].sort().equals(events["event_id"].sort())
    assert good.filter(pl.col("item_id") == items["item_id"][0]).height > 0
    assert report.tables["users"].reasons == {"duplicate user_id": 1, "signup_date in the future": 1}
    assert report.tables["items"].reasons == {"price below validation.min_price (0)": 1}
    assert pl.read_parquet(out / "users.parquet").height == users.height
    assert (out / "report.txt").read_text().count("quarantined") == 3
    assert "1 deduplicated" in (out / "report.txt").read_text()


def test_multiple_reasons_on_one_row(tmp_path, tiny_raw):
    events, users, items = _read(tiny_raw)
    row = events.head(1).with_columns(pl.lit(None, pl.Int64).alias("user_id"), pl.lit("poke").alias("event_type"),
                                      pl.lit(events["event_id"].max() + 1, pl.Int64).alias("event_id"))
    source = _write(tmp_path / "src", pl.concat([events, row]), users, items)
    _run(source, tmp_path / "out")
    reasons = pl.read_parquet(tmp_path / "out" / "quarantine" / "events.parquet")["reason"].to_list()
    assert reasons == ["missing user_id; unknown event_type"]


def test_too_many_bad_rows_stops_and_writes_nothing(tmp_path, tiny_raw):
    events, users, items = _read(tiny_raw)
    n_bad = events.height // 10
    broken = pl.concat([events.slice(n_bad), events.head(n_bad).with_columns(pl.lit("oops").alias("event_type"))])
    source = _write(tmp_path / "src", broken, users, items)
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("an earlier good run")
    with pytest.raises(ValidationFailed, match=r"events: .* rows bad \(10\.0%; most common: unknown event_type\)"):
        _run(source, out, max_bad_row_share=0.05)
    assert [p.name for p in out.iterdir()] == ["previous.txt"]  # the earlier output is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no temporary leftovers


def test_schema_change_is_refused_with_no_output(tmp_path, tiny_raw):
    events, users, items = _read(tiny_raw)
    source = _write(tmp_path / "src", events.drop("item_id"), users, items)
    with pytest.raises(IngestSchemaError, match=r"events: required column\(s\) missing: item_id"):
        _run(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    floats = _write(tmp_path / "floats", events.with_columns(pl.col("user_id").cast(pl.Float32)), users, items)
    with pytest.raises(IngestSchemaError, match=r"events: column type\(s\) changed: user_id \('user_id' is Float32"):
        _run(floats, tmp_path / "out")
    dates = _write(tmp_path / "dates", events, users, items.with_columns(pl.col("price").cast(pl.Date, strict=False)))
    with pytest.raises(IngestSchemaError, match=r"items: column type\(s\) changed: price \('price' is Date"):
        _run(dates, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_stable_batch_passes_statistics_checks(tmp_path, tiny_raw, tiny_validated):
    report = validate(tiny_raw, tmp_path / "again", ValidationConfig(), IngestConfig(),
                      reference=tiny_validated / "report.json", now=NOW)
    assert report.stats_checks == []
    assert "all within bounds" in report.summary()


def test_statistics_checks_catch_volume_drop_null_jump_and_new_categories(tmp_path, tiny_raw, tiny_validated):
    events, users, items = _read(tiny_raw)
    thin = events.filter(pl.col("event_id") % 4 == 0)  # same period, a quarter of the volume
    users = users.with_columns(pl.when(pl.col("user_id") % 2 == 0).then(None).otherwise(pl.col("country"))
                               .alias("country"))
    items = items.with_columns(pl.when(pl.col("item_id") % 2 == 0).then(pl.lit("new_") + pl.col("category"))
                               .otherwise(pl.col("category")).alias("category"))
    source = _write(tmp_path / "src", thin, users, items)
    report = validate(source, tmp_path / "out", ValidationConfig(), IngestConfig(),
                      reference=tiny_validated / "report.json", now=NOW)
    found = {(c["check"], c["table"], c.get("column")) for c in report.stats_checks}
    assert found == {("volume_drop", "events", None), ("null_rate_jump", "users", "country"),
                     ("new_categories", "items", "category")}
    assert all(c["severity"] == "warn" for c in report.stats_checks)
    with pytest.raises(ValidationFailed, match="events per day fell"):
        validate(source, tmp_path / "strict", ValidationConfig(on_stats_violation="fail"), IngestConfig(),
                 reference=tiny_validated / "report.json", now=NOW)
    assert not (tmp_path / "strict").exists()
