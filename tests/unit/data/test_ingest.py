"""Bring-your-own-data: a shop export with other column names, event names, formats and file types."""

from datetime import UTC, datetime

import polars as pl
import pytest

from recsys.config import DataConfig, IngestConfig, ValidationConfig, load_config
from recsys.data.ingest import IngestSchemaError
from recsys.data.validate import validate
from tests.conftest import ROOT

NOW = datetime(2026, 11, 27, tzinfo=UTC)
EXAMPLE = load_config(DataConfig, ROOT / "configs" / "ingest_example.yaml").ingest


def _theirs(tiny_raw, out, fmt="csv"):
    """Rewrite our export the way another shop would: its names, its event words, its formats."""
    cols = EXAMPLE.columns
    their_event = {ours: theirs for theirs, ours in EXAMPLE.event_types.items()}
    events = pl.read_parquet(tiny_raw / "events" / "*.parquet").with_columns(
        pl.col("event_type").replace(their_event),
        pl.col("timestamp").dt.strftime(EXAMPLE.timestamp_format))
    users = pl.read_parquet(tiny_raw / "users.parquet")
    items = pl.read_parquet(tiny_raw / "items.parquet").with_columns(
        pl.when(pl.col("available")).then(pl.lit("yes")).otherwise(pl.lit("no")).alias("available"))
    out.mkdir()
    events = events.rename(cols["events"])
    if fmt == "csv":
        events.write_csv(out / "events.csv")
    else:
        events.write_ndjson(out / "events.jsonl")
    users.rename(cols["users"]).write_csv(out / "customers.csv")
    items.rename(cols["items"]).write_csv(out / "products.csv")
    return out


def _canonical(root):
    return pl.read_parquet(root / "events.parquet").sort("event_id")


def test_csv_export_with_other_names_matches_our_own(tmp_path, tiny_raw, tiny_validated):
    source = _theirs(tiny_raw, tmp_path / "theirs")
    report = validate(source, tmp_path / "out", ValidationConfig(), EXAMPLE, now=NOW)
    assert all(t.bad == 0 for t in report.tables.values())
    ours = _canonical(tiny_validated).with_columns(pl.col("timestamp").dt.truncate("1s"))  # their format has seconds
    assert _canonical(tmp_path / "out").equals(ours)
    for table in ("users", "items"):
        assert pl.read_parquet(tmp_path / "out" / f"{table}.parquet").equals(
            pl.read_parquet(tiny_validated / f"{table}.parquet"))


def test_jsonl_events_with_epoch_timestamps(tmp_path, tiny_raw, tiny_validated):
    source = _theirs(tiny_raw, tmp_path / "theirs", fmt="jsonl")
    events = pl.read_parquet(tiny_raw / "events" / "*.parquet").rename(EXAMPLE.columns["events"]).with_columns(
        pl.col("ts").dt.epoch("ms"),
        pl.col("action").replace({ours: theirs for theirs, ours in EXAMPLE.event_types.items()}))
    events.write_ndjson(source / "events.jsonl")
    ingest = IngestConfig(**{**EXAMPLE.__dict__, "events": "events.jsonl", "timestamp_format": None,
                             "timestamp_unit": "ms"})
    report = validate(source, tmp_path / "out", ValidationConfig(), ingest, now=NOW)
    assert report.tables["events"].bad == 0
    assert _canonical(tmp_path / "out").equals(_canonical(tiny_validated))


def test_unparseable_text_values_are_quarantined_not_fatal(tmp_path, tiny_raw):
    source = _theirs(tiny_raw, tmp_path / "theirs")
    events = pl.read_csv(source / "events.csv", infer_schema=False)
    events = pl.concat([events, events.head(2).with_columns(
        pl.Series("id", ["900000001", "900000002"]), pl.Series("ts", ["yesterday", "01/09/2026 10:00:00"]),
        pl.Series("slot", ["1", "second"]))])
    events.write_csv(source / "events.csv")
    report = validate(source, tmp_path / "out", ValidationConfig(), EXAMPLE, now=NOW)
    assert report.tables["events"].reasons == {"unparseable timestamp": 1, "unparseable position": 1}
    bad = pl.read_parquet(tmp_path / "out" / "quarantine" / "events.parquet")
    assert set(bad["timestamp"]) == {"yesterday", "01/09/2026 10:00:00"}  # raw text kept as it was


def test_a_mapped_column_that_is_missing_is_named(tmp_path, tiny_raw):
    source = _theirs(tiny_raw, tmp_path / "theirs")
    pl.read_csv(source / "customers.csv").rename({"customer": "client"}).write_csv(source / "customers.csv")
    with pytest.raises(IngestSchemaError, match=r"users: required column\(s\) missing: user_id \(mapped from "
                                                r"'customer'\); the files \(customers.csv\) have \['client'"):
        validate(source, tmp_path / "out", ValidationConfig(), EXAMPLE, now=NOW)
    assert not (tmp_path / "out").exists()


def test_mapping_to_a_column_we_do_not_have_is_refused(tmp_path, tiny_raw):
    source = _theirs(tiny_raw, tmp_path / "theirs")
    ingest = IngestConfig(**{**EXAMPLE.__dict__, "columns": {**EXAMPLE.columns, "items": {"colour": "c"}}})
    with pytest.raises(IngestSchemaError, match=r"ingest.columns.items: \['colour'\] are not columns of items"):
        validate(source, tmp_path / "out", ValidationConfig(), ingest, now=NOW)
