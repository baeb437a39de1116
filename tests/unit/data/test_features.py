"""Point-in-time features: exact values on a hand-made log, and no leakage from the future."""

from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from recsys.data.dataset import _fit_values
from recsys.data.encoders import fit_encoders
from recsys.data.features import F, FeatureBuilder, build_examples, online_tables, ranking_examples, task_features
from recsys.events import EVENTS, ITEMS, USERS

T0 = datetime(2026, 9, 1, tzinfo=UTC)


def _at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _events(rows):
    cols = ["timestamp", "user_id", "item_id", "event_type", "request_id", "position"]
    df = pl.DataFrame([dict(zip(cols, r, strict=True)) for r in rows], schema_overrides={
        "timestamp": pl.Datetime("us", "UTC"), "request_id": pl.Int64, "position": pl.Int32})
    return (df.with_row_index("event_id", offset=1).with_columns(pl.col("event_id").cast(pl.Int64),
                                                                  pl.lit(1, pl.Int64).alias("session_id"))
            .select(EVENTS.names).cast(EVENTS.schema).sort("timestamp", "event_id"))


HAND_EVENTS = _events([
    (_at(0), 1, 1, "impression", 1, 0),
    (_at(0), 1, 2, "impression", 1, 1),
    (_at(1), 1, 1, "click", 1, 0),
    (_at(2), 1, 1, "view", None, None),
    (_at(5), 1, 3, "view", None, None),
    (_at(5), 1, 3, "purchase", None, None),
    (_at(10), 1, 2, "impression", 2, 0),  # example A: user 1 has a past
    (_at(10), 2, 1, "impression", 3, 0),  # example B: user 2 has none
    (_at(12), 2, 1, "view", None, None),
    (_at(8 * 24 * 60 + 3), 1, 1, "impression", 4, 2),  # example C: 8 days later, the views left the window
])
HAND_USERS = pl.DataFrame({"user_id": [1, 2], "signup_date": [date(2026, 8, 1), date(2026, 8, 31)],
                           "country": ["DE", None], "device": ["mobile", "desktop"]}, schema=USERS.schema)
HAND_ITEMS = pl.DataFrame({"item_id": [1, 2, 3], "category": ["A", "B", "A"], "brand": ["x", "y", "x"],
                           "price": [10.0, 100.0, 20.0], "available": [True, True, False]}, schema=ITEMS.schema)


@pytest.fixture()
def hand(schema):
    encoders = fit_encoders(schema, _fit_values(schema, HAND_USERS, HAND_ITEMS))
    return FeatureBuilder(schema, HAND_EVENTS, HAND_USERS, HAND_ITEMS, encoders)


def _values(df: pl.DataFrame, where: pl.Expr) -> dict:
    row = df.filter(where)
    assert row.height == 1
    return {k.removeprefix(F): v for k, v in row.row(0, named=True).items()}


def test_exact_point_in_time_values(hand, schema):
    df = hand.add(ranking_examples(HAND_EVENTS.lazy(), schema), task_features(schema, "ranking")).collect()
    a = _values(df, (pl.col("timestamp") == _at(10)) & (pl.col("user_id") == 1))
    b = _values(df, (pl.col("timestamp") == _at(10)) & (pl.col("user_id") == 2))
    c = _values(df, pl.col("request_id") == 4)
    first = _values(df, (pl.col("request_id") == 1) & (pl.col("item_id") == 1))
    item = {v: i + 1 for i, v in enumerate(hand.encoders.fitted["item_id"].vocab)}  # item id -> embedding row
    pad = [0] * (schema["user_history"].length - 2)

    # user 1 at minute 10: two views (minutes 2 and 5), one purchase, last interaction 5 minutes ago
    assert a["user_views"] == pytest.approx(np.log1p(2)) and a["user_purchases"] == pytest.approx(np.log1p(1))
    assert a["user_recency_hours"] == pytest.approx(np.log1p(5 / 60))
    assert a["user_history"] == [item[3], item[1], *pad]  # newest first
    category = {v: i + 1 for i, v in enumerate(hand.encoders.fitted["item_category"].vocab)}
    assert a["user_history_category"] == [category["A"], category["A"], *pad]  # items 3 and 1 are both in A
    assert a["user_tenure_days"] == pytest.approx(np.log1p(31 + 10 / 1440))
    assert a["item_id"] == item[2] and a["item_category"] != 0 and a["user_country"] != 0
    # item 2: one impression before, no click -> smoothed CTR; no views in the last 7 days
    assert a["item_ctr"] == pytest.approx((0 + 0.05 * 50) / (1 + 50))
    assert a["item_views_7d"] == 0
    assert a["user_category_share"] == 0.0  # none of user 1's views were in category B
    assert a["click"] == 0.0 and a["position"] == 1  # slot 0 -> index 1 (0 is "missing")
    # user 2 has no past: the schema's defaults; item 1 had 1 impression, 1 click and 1 view before minute 10
    assert b["user_views"] == 0 and b["user_recency_hours"] == pytest.approx(np.log1p(720.0))
    assert b["user_history"] == [0] * schema["user_history"].length
    assert b["user_history_category"] == [0] * schema["user_history"].length
    assert b["item_ctr"] == pytest.approx((1 + 2.5) / (1 + 50)) and b["item_views_7d"] == pytest.approx(np.log1p(1))
    assert b["user_country"] == 0  # missing -> index 0
    # the first impression's own click is its label, not a feature: item 1 had no impression before it
    assert first["click"] == 1.0
    assert first["item_ctr"] == pytest.approx(0.05) and first["user_views"] == 0
    # 8 days later both views of item 1 are older than 7 days; both of user 1's views were in category A
    assert c["item_views_7d"] == 0
    assert c["user_category_share"] == 1.0
    assert c["item_ctr"] == pytest.approx((1 + 2.5) / (2 + 50))
    assert c["item_category"] != a["item_category"]  # A vs B


def test_ties_at_the_example_instant_are_not_visible(hand, schema):
    """The view and the purchase at minute 5 are invisible to anything at minute 5 itself."""
    probe = pl.DataFrame({"event_id": [99], "timestamp": [_at(5)], "user_id": [1], "item_id": [3]},
                         schema_overrides={"timestamp": pl.Datetime("us", "UTC")}).lazy()
    feats = [schema["user_views"], schema["user_purchases"], schema["user_history"]]
    row = _values(hand.add(probe, feats).collect(), pl.lit(True))
    assert row["user_views"] == pytest.approx(np.log1p(1))  # only the view at minute 2
    assert row["user_purchases"] == 0
    assert row["user_history"][:2] == [hand.encoders.fitted["item_id"].vocab.index(1) + 1, 0]


def test_example_tables_have_model_dtypes(hand, schema):
    df = build_examples(hand, "ranking").collect()
    assert df.height == HAND_EVENTS.filter(pl.col("event_type") == "impression").height
    assert df["_timestamp"].is_sorted()
    for f in task_features(schema, "ranking"):
        expected = {"int64": pl.Int64, "float32": pl.Float32}[f.model_dtype]
        if f.length > 1:
            expected = pl.Array(pl.Int64, f.length)
        assert df[f.name].dtype == expected, f.name


def _brute_force(events: pl.DataFrame, category_of: dict, row: dict, schema, encoders) -> dict:
    """Recompute a ranking example's features in plain Python from events strictly before it."""
    t, user, item = row["_timestamp"], row["_user"], row["_item"]
    past = events.filter(pl.col("timestamp") < t)
    mine = past.filter(pl.col("user_id") == user)
    views = mine.filter(pl.col("event_type") == "view").sort("timestamp", "event_id", descending=True)
    vocab = {v: i + 1 for i, v in enumerate(encoders.fitted["item_id"].vocab)}
    viewed = views["item_id"].to_list()[: schema["user_history"].length]
    hist = [vocab[i] for i in viewed]
    categories = {v: i + 1 for i, v in enumerate(encoders.fitted["item_category"].vocab)}
    hist_category = [categories.get(category_of.get(i), 0) for i in viewed]
    it = past.filter(pl.col("item_id") == item)
    window = it.filter((pl.col("event_type") == "view") & (pl.col("timestamp") >= t - timedelta(days=7)))
    return {
        "user_views": float(np.log1p(views.height)),
        "user_purchases": float(np.log1p(mine.filter(pl.col("event_type") == "purchase").height)),
        "user_history": hist + [0] * (schema["user_history"].length - len(hist)),
        "user_history_category": hist_category + [0] * (schema["user_history"].length - len(hist)),
        "item_views_7d": float(np.log1p(window.height)),
        "item_ctr": (it.filter(pl.col("event_type") == "click").height + 2.5)
        / (it.filter(pl.col("event_type") == "impression").height + 50),
    }


def test_pipeline_matches_a_brute_force_recomputation(tiny_dataset, tiny_validated, schema):
    events = pl.read_parquet(tiny_validated / "events.parquet")
    encoders = tiny_dataset.encoders(schema)
    category_of = dict(pl.read_parquet(tiny_validated / "items.parquet").select("item_id", "category").iter_rows())
    shards = pl.concat([tiny_dataset.read("ranking", s) for s in ("train", "val", "test")])
    for row in shards.sample(60, seed=1).iter_rows(named=True):
        expected = _brute_force(events, category_of, row, schema, encoders)
        for name, value in expected.items():
            assert row[name] == pytest.approx(value, rel=1e-5), (name, row["_event_id"])


def test_no_feature_sees_the_future(tiny_validated, schema):
    """Delete everything from day 10 on: the examples before day 10 must not change at all."""
    events = pl.read_parquet(tiny_validated / "events.parquet")
    users = pl.read_parquet(tiny_validated / "users.parquet")
    items = pl.read_parquet(tiny_validated / "items.parquet")
    cut = events["timestamp"].min() + timedelta(days=10)
    encoders = fit_encoders(schema, _fit_values(schema, users, items))
    for task in ("ranking", "retrieval"):
        full = build_examples(FeatureBuilder(schema, events, users, items, encoders), task).collect()
        past_only = FeatureBuilder(schema, events.filter(pl.col("timestamp") < cut), users, items, encoders)
        truncated = build_examples(past_only, task).collect()
        before = full.filter(pl.col("_timestamp") < cut)
        if task == "ranking":  # a label may come from a click after the cut; the features may not
            before, truncated = before.drop("click"), truncated.drop("click")
        assert truncated.height == before.height > 1000
        assert truncated.equals(before), task


def test_online_tables_are_the_state_after_the_last_event(tiny_dataset, tiny_validated, schema):
    events = pl.read_parquet(tiny_validated / "events.parquet")
    users = tiny_dataset.online("users")
    items = tiny_dataset.online("items")
    assert users.height == pl.read_parquet(tiny_validated / "users.parquet").height
    assert items["_available"].dtype == pl.Boolean and not items["_available"].all()
    views = events.filter(pl.col("event_type") == "view").group_by("user_id").len()
    merged = users.join(views, left_on="_user", right_on="user_id", how="left").with_columns(pl.col("len").fill_null(0))
    assert np.allclose(merged["user_views"].to_numpy(), np.log1p(merged["len"].to_numpy()), rtol=1e-6)
    # and it is the same code path: the online row equals a feature lookup at the as-of instant
    builder = FeatureBuilder(schema, events, pl.read_parquet(tiny_validated / "users.parquet"),
                             pl.read_parquet(tiny_validated / "items.parquet"), tiny_dataset.encoders(schema))
    as_of = datetime.fromisoformat(tiny_dataset.manifest.online["as_of"])
    again = online_tables(builder, as_of)["users"].collect()
    assert again.equals(users)
