"""The generator: the shop format exactly, deterministic, and honest (learnable signal, ground truth)."""

import json
from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from recsys.data.generate import generate
from recsys.events import EVENT_TYPES, EVENTS, ITEMS, USERS
from recsys.hashing import file_sha256


def _files(root):
    return {p.relative_to(root).as_posix(): file_sha256(p) for p in sorted(root.rglob("*.parquet"))}


def test_writes_the_shop_format(tiny_raw):
    events = pl.read_parquet(tiny_raw / "events" / "*.parquet")
    assert events.schema == {**EVENTS.schema, "event_type": pl.String}  # plain strings in the export
    assert set(events["event_type"].unique()) == set(EVENT_TYPES)
    assert events["event_id"].is_unique().all()
    assert pl.read_parquet(tiny_raw / "users.parquet").schema == USERS.schema
    assert pl.read_parquet(tiny_raw / "items.parquet").schema == ITEMS.schema
    # impressions and their clicks carry request and position; organic events do not
    imp = events.filter(pl.col("event_type").is_in(["impression", "click"]))
    assert imp["request_id"].null_count() == 0 and imp["position"].null_count() == 0
    assert events.filter(pl.col("event_type") == "purchase")["request_id"].null_count() == events.filter(
        pl.col("event_type") == "purchase").height
    # every click is on an item that was shown in that list
    shown = imp.filter(pl.col("event_type") == "impression").select("request_id", "item_id")
    clicks = imp.filter(pl.col("event_type") == "click").select("request_id", "item_id")
    assert clicks.join(shown, on=["request_id", "item_id"], how="anti").is_empty()
    assert shown.is_duplicated().sum() == 0  # a list never shows an item twice


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, tiny_cfg, tiny_raw):
    again = generate(tiny_cfg.generator, tmp_path / "again", progress=False)
    assert _files(again.out) == _files(tiny_raw)
    other = generate(replace(tiny_cfg.generator, seed=tiny_cfg.generator.seed + 1), tmp_path / "other",
                     progress=False)
    assert _files(other.out)["events/part-00000.parquet"] != _files(tiny_raw)["events/part-00000.parquet"]


def test_streams_in_bounded_chunks(tmp_path, tiny_cfg):
    cfg = replace(tiny_cfg.generator, target_events=40_000, chunk_events=5_000)
    s = generate(cfg, tmp_path / "chunks", progress=False)
    sizes = [pl.scan_parquet(p).select(pl.len()).collect().item() for p in sorted((s.out / "events").glob("*.parquet"))]
    assert s.n_parts == len(sizes) >= 6
    assert max(sizes) < 2 * cfg.chunk_events  # memory is bounded by the chunk, not the total
    assert 40_000 <= sum(sizes) == s.n_events < 48_000


@pytest.fixture(scope="module")
def medium(tmp_path_factory, tiny_cfg):
    cfg = replace(tiny_cfg.generator, n_users=3000, n_items=1500, target_events=300_000, chunk_events=100_000)
    out = generate(cfg, tmp_path_factory.mktemp("medium") / "shop", progress=False).out
    events = pl.read_parquet(out / "events" / "*.parquet")
    truth = pl.read_parquet(out / "ground_truth" / "impressions" / "*.parquet")
    return cfg, out, events, truth


def test_clicks_follow_affinity_position_and_popularity(medium):
    _, out, events, truth = medium
    clicks = events.filter(pl.col("event_type") == "click").select("request_id", "item_id",
                                                                   pl.lit(1).alias("clicked"))
    imp = (events.filter(pl.col("event_type") == "impression").join(truth, on="event_id")
           .join(clicks, on=["request_id", "item_id"], how="left").with_columns(pl.col("clicked").fill_null(0)))
    # position effect: the top slot is clicked clearly more than the last
    by_pos = imp.group_by("position").agg(pl.col("clicked").mean()).sort("position")["clicked"]
    assert by_pos[0] > 1.5 * by_pos[-1]
    # affinity is the signal a model can learn: clicked impressions have higher true affinity
    mean_affinity = imp.group_by("clicked").agg(pl.col("affinity").mean()).sort("clicked")["affinity"]
    assert mean_affinity[1] > mean_affinity[0] + 0.1
    # the saved ground truth is calibrated: observed CTR matches the true probability per decile
    decile = (pl.col("p_click").rank("ordinal") * 10 // (pl.len() + 1)).alias("bin")
    calib = (imp.with_columns(decile)
             .group_by("bin").agg(pl.col("p_click").mean().alias("p"), pl.col("clicked").mean().alias("ctr")))
    assert np.allclose(calib["p"], calib["ctr"], atol=0.02)
    # popularity is Zipf-like: the top 5% of items get a large share of impressions
    counts = imp.group_by("item_id").len().sort("len", descending=True)["len"]
    assert counts.head(max(1, len(counts) // 20)).sum() / counts.sum() > 0.25
    assert json.loads((out / "ground_truth" / "params.json").read_text())["n_events"] == events.height


def test_preference_shift_knob(tmp_path, tiny_cfg):
    from recsys.data.generate import ShopWorld

    cfg = replace(tiny_cfg.generator, drift=replace(tiny_cfg.generator.drift, start_day=10, strength=0.9))
    world = ShopWorld(cfg)
    users = np.arange(cfg.n_users)
    before = np.full(cfg.n_users, world.start_s + 86400)
    after = np.full(cfg.n_users, world.start_s + 11 * 86400)
    favourite = np.argmax(world.user_vec @ world.item_vec.T, axis=1)  # each user's top item before the shift
    aff_before = world.affinity(users, favourite, before)
    aff_after = world.affinity(users, favourite, after)
    assert aff_after.mean() < aff_before.mean() - 0.3
    no_drift = ShopWorld(tiny_cfg.generator)
    assert np.allclose(no_drift.affinity(users, favourite, after), no_drift.affinity(users, favourite, before))
    out = generate(cfg, tmp_path / "drift", progress=False).out
    gt = json.loads((out / "ground_truth" / "params.json").read_text())
    assert gt["drift_at"].startswith("2026-09-11")
