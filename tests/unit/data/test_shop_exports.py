"""A shop's own export: text ids coded stably and mapped back, the columns and tables it lacks derived (sessions,
event ids, signup dates, users and items), its own attribute columns, its own price scaling, and a log of one
event type. Every expected value is worked out by hand or computed independently of the code under test."""

import hashlib
import logging
from datetime import UTC, date, datetime

import polars as pl
import pytest

from recsys.config import IngestConfig, ValidationConfig
from recsys.data.attributes import attribute_tables
from recsys.data.features import retrieval_event_types, with_implied_views
from recsys.data.ingest import IngestSchemaError
from recsys.data.validate import validate
from recsys.events import EventType
from recsys.ids import IdError, IdMap
from recsys.schema import load_schema

NOW = datetime(2026, 11, 27, tzinfo=UTC)
LENIENT = ValidationConfig(max_bad_row_share=0.5, min_price=None)
T0 = 1_764_547_200  # 2025-12-01 00:00:00 UTC, in seconds


def _blake(text: str) -> int:  # the documented code: the first 8 bytes of BLAKE2b, sign bit cleared
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") & (2**63 - 1)


def _csv(path, header, *rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *(",".join(map(str, r)) for r in rows)]) + "\n")


def _clicks_log(root, rows):
    """An impressions-and-clicks log as a shop exports it: user, item, action, epoch seconds; nothing else."""
    _csv(root / "log.csv", "user,item,action,ts", *rows)
    return IngestConfig(events="log.csv", users=None, items=None, timestamp_unit="s",
                        columns={"events": {"user_id": "user", "item_id": "item", "event_type": "action",
                                            "timestamp": "ts"}})


def _validated(tmp_path, ingest, cfg=LENIENT):
    report = validate(tmp_path, tmp_path / "out", cfg, ingest, now=NOW)
    return report, {t: pl.read_parquet(tmp_path / "out" / f"{t}.parquet") for t in ("events", "users", "items")}


def test_text_ids_are_coded_stably_and_mapped_back(tmp_path):
    ingest = _clicks_log(tmp_path, [("u-ann", "SKU-1", "click", T0), ("u-bob", "007", "click", T0 + 60),
                                    ("u-ann", "7", "purchase", T0 + 120)])
    report, t = _validated(tmp_path, ingest)
    assert report.ids["user_id"] == "text" and report.ids["item_id"] == "text"  # "007" is not the number 7
    assert sorted(t["events"]["user_id"].to_list()) == sorted([_blake("u-ann")] * 2 + [_blake("u-bob")])
    assert set(t["items"]["item_id"]) == {_blake("SKU-1"), _blake("007"), _blake("7")}
    items = IdMap.read(tmp_path / "out", "item_id")
    assert items.decode(_blake("007")) == "007" and items.decode(_blake("7")) == "7"
    assert items.encode("SKU-1") == _blake("SKU-1") and items.encode(" SKU-1 ") == _blake("SKU-1")
    users = IdMap.read(tmp_path / "out", "user_id")
    assert users.decode(_blake("u-bob")) == "u-bob"


def test_a_models_map_adds_the_items_it_knows_and_a_map_of_another_kind_is_refused():
    served = IdMap("item_id", "text", {_blake("SKU-1"): "SKU-1"})
    retrained = IdMap("item_id", "text", {_blake("SKU-1"): "SKU-1", _blake("SKU-new"): "SKU-new"})
    both = served.merged(retrained)
    assert both.decode(_blake("SKU-new")) == "SKU-new" and both.decode(_blake("SKU-1")) == "SKU-1"
    assert IdMap("item_id", "integer").merged(IdMap("item_id", "integer")).decode(42) == 42
    with pytest.raises(IdError, match="these ids are text but the model's are integer"):
        served.merged(IdMap("item_id", "integer"))


def test_integer_ids_stay_numbers_and_a_few_garbled_ones_are_quarantined(tmp_path):
    rows = [(i, 100 + i, "click", T0 + i) for i in range(1, 6)] + [("oops", 101, "click", T0 + 9)]
    report, t = _validated(tmp_path, _clicks_log(tmp_path, rows))
    assert report.ids["user_id"] == "integer" and report.ids["item_id"] == "integer"
    assert sorted(t["events"]["user_id"]) == [1, 2, 3, 4, 5]
    assert report.tables["events"].reasons == {"unparseable user_id": 1}
    assert not IdMap.path(tmp_path / "out", "user_id").exists()
    assert IdMap.read(tmp_path / "out", "user_id").decode(3) == 3


def test_sessions_split_after_the_inactivity_gap(tmp_path):
    minute = 60
    rows = [("a", 1, "click", T0), ("a", 2, "click", T0 + 10 * minute), ("a", 3, "click", T0 + 45 * minute),
            ("a", 1, "purchase", T0 + 50 * minute), ("b", 2, "click", T0 + 5 * minute)]
    _, t = _validated(tmp_path, _clicks_log(tmp_path, rows))
    events = t["events"].sort("timestamp")
    minutes = ((events["timestamp"] - datetime.fromtimestamp(T0, UTC)).dt.total_seconds() // 60).cast(pl.Int64)
    sessions = events.with_columns(minutes.alias("m")).group_by("session_id").agg(pl.col("m").sort())
    assert sorted(sessions["m"].to_list()) == [[0, 10], [5], [45, 50]]  # 35 minutes from 10 to 45: a new one
    longer = _clicks_log(tmp_path / "long", rows)
    validate(tmp_path / "long", tmp_path / "long_out", LENIENT,
             IngestConfig(**{**longer.__dict__, "session_gap_minutes": 60}), now=NOW)
    again = pl.read_parquet(tmp_path / "long_out" / "events.parquet")
    assert again.group_by("user_id").agg(pl.col("session_id").n_unique())["session_id"].to_list() == [1, 1]


def test_event_ids_are_a_stable_hash_and_identical_rows_are_one_event(tmp_path):
    rows = [("a", 1, "click", T0), ("a", 1, "click", T0), ("a", 1, "click", T0 + 1)]
    report, t = _validated(tmp_path, _clicks_log(tmp_path, rows))
    assert t["events"].height == 2 and report.tables["events"].deduplicated == 1
    first = sorted(t["events"]["event_id"])
    _validated(tmp_path, _clicks_log(tmp_path, rows))  # read again: the same ids
    assert sorted(pl.read_parquet(tmp_path / "out" / "events.parquet")["event_id"]) == first
    assert set(report.derived["events"]) == {"event_id", "session_id"}


def test_users_and_items_tables_are_derived_from_the_events(tmp_path):
    day = 86_400
    rows = [("a", 1, "click", T0 + 2 * day), ("a", 2, "click", T0 + 5 * day), ("b", 2, "purchase", T0 + 3 * day)]
    report, t = _validated(tmp_path, _clicks_log(tmp_path, rows))
    users = dict(t["users"].select("user_id", "signup_date").iter_rows())
    assert users == {_blake("a"): date(2025, 12, 3), _blake("b"): date(2025, 12, 4)}
    assert t["items"].height == 2 and t["items"]["available"].all() and t["items"]["category"].is_null().all()
    assert report.derived["users"] == ["table"] and report.derived["items"] == ["table"]


def test_signup_dates_come_from_the_first_event_when_the_users_table_has_none(tmp_path):
    day = 86_400
    ingest = _clicks_log(tmp_path, [("a", 1, "click", T0 + 2 * day), ("a", 1, "click", T0 + 4 * day)])
    _csv(tmp_path / "customers.csv", "user,country", ("a", "DE"), ("nobody", "FR"))
    ingest = IngestConfig(**{**ingest.__dict__, "users": "customers.csv",
                             "columns": {**ingest.columns, "users": {"user_id": "user"}}})
    report, t = _validated(tmp_path, ingest)
    signup = dict(t["users"].select("user_id", "signup_date").iter_rows())
    # a user with no events yet: the export's last event date
    assert signup == {_blake("a"): date(2025, 12, 3), _blake("nobody"): date(2025, 12, 5)}
    assert report.derived["users"] == ["signup_date"]


def test_the_shops_own_columns_and_price_scaling_get_in(tmp_path):
    ingest = _clicks_log(tmp_path, [("a", "p1", "click", T0), ("a", "p2", "click", T0 + 5)])
    _csv(tmp_path / "products.csv", "sku,dept,std_price,fabric", ("p1", "shoes", -1.25, "wool"),
         ("p2", "hats", 0.5, ""))
    ingest = IngestConfig(**{**ingest.__dict__, "items": "products.csv",
                             "columns": {**ingest.columns, "items": {"item_id": "sku", "category": "dept",
                                                                      "price": "std_price"}}})
    _, t = _validated(tmp_path, ingest)
    assert sorted(t["items"]["price"]) == [-1.25, 0.5] and "fabric" in t["items"].columns
    report = validate(tmp_path, tmp_path / "strict", ValidationConfig(max_bad_row_share=0.6), ingest, now=NOW)
    assert report.tables["items"].reasons == {"price below validation.min_price (0)": 1}


def test_a_log_of_one_event_type_is_read_as_that_type(tmp_path):
    _csv(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp", (1, 10, 4.0, T0), (2, 10, 3.5, T0 + 1))
    ingest = IngestConfig(events="ratings.csv", users=None, items=None, timestamp_unit="s", event_type="view",
                          columns={"events": {"user_id": "userId", "item_id": "movieId"}})
    _, t = _validated(tmp_path, ingest)
    assert t["events"]["event_type"].cast(pl.String).to_list() == ["view", "view"]
    with pytest.raises(IngestSchemaError, match=r"ingest.event_type: 'rating' is not one of"):
        validate(tmp_path, tmp_path / "bad", LENIENT, IngestConfig(**{**ingest.__dict__, "event_type": "rating"}),
                 now=NOW)
    without = IngestConfig(**{**ingest.__dict__, "event_type": None})
    with pytest.raises(IngestSchemaError, match=r"required column\(s\) missing: event_type"):
        validate(tmp_path, tmp_path / "bad", LENIENT, without, now=NOW)


def test_retrieval_positives_fall_back_to_implicit_feedback():
    schema = load_schema()  # positives: views
    with_views = pl.DataFrame({"event_type": ["impression", "view", "click"]})
    assert retrieval_event_types(with_views, schema) == ["view"]
    implicit = pl.DataFrame({"event_type": ["impression", "purchase", "click", "click"]})
    assert retrieval_event_types(implicit, schema) == ["click", "purchase"]
    assert retrieval_event_types(pl.DataFrame({"event_type": ["impression"]}), schema) == []


def test_an_attribute_feature_reads_any_column_and_a_missing_one_warns_by_name(caplog):
    schema = load_schema()
    items = pl.DataFrame({"item_id": [1, 2], "category": ["a", "b"], "price": ["3.5", "x"]})
    users = pl.DataFrame({"user_id": [1], "signup_date": [date(2025, 1, 1)]})
    with caplog.at_level(logging.WARNING):
        users, items, warnings = attribute_tables(schema, users, items)
    assert items["price"].to_list() == [3.5, None]  # text to numbers for a dense / bucketed feature
    named = {w.split("'")[1] for w in warnings}
    assert {"user_country", "user_device", "item_brand"} <= named and "item_price" not in named
    assert users["country"].is_null().all()
    assert all(w in caplog.text for w in warnings)


def test_a_log_without_views_gets_a_view_at_each_click():
    ts = [datetime(2026, 9, 1, 10, m, tzinfo=UTC) for m in range(3)]
    events = pl.DataFrame({"event_id": [1, 2, 3], "timestamp": ts, "user_id": [7, 7, 7], "item_id": [4, 4, 5],
                           "event_type": ["impression", "click", "purchase"]},
                          schema_overrides={"event_type": EventType})
    implied = with_implied_views(events)
    views = implied.filter(pl.col("event_type") == "view")
    assert views.select("timestamp", "user_id", "item_id").rows() == [(ts[1], 7, 4)]  # the click's, at its time
    assert views["event_id"].to_list() == [_blake("view:2")]
    assert implied.height == 4 and implied["timestamp"].is_sorted()
    with_a_view = pl.concat([events, events.head(1).with_columns(pl.lit("view").cast(EventType).alias("event_type"),
                                                                 pl.lit(9, pl.Int64).alias("event_id"))])
    assert with_implied_views(with_a_view).equals(with_a_view)  # a log with views is left as it is
