"""The ground-truth list metric: by hand, against the generator's own record of its lists, and the oracle."""

import math

import numpy as np
import polars as pl
import pytest

from recsys.data.features import META_ITEM, META_USER
from recsys.data.generate import ShopWorld
from recsys.evaluation.expected_clicks import (
    best_lists,
    best_of,
    expected_clicks,
    oracle_lists,
    shrunk_taste,
    taste_from_views,
    view_ceiling_lists,
    world_of,
)


@pytest.fixture(scope="module")
def world(tiny_cfg) -> ShopWorld:
    return ShopWorld(tiny_cfg.generator)


def test_a_list_by_hand(world):
    cfg = world.cfg

    def p(user: int, item: int, position: int) -> float:  # shop ids: index + 1
        dot = sum(float(a) * float(b) for a, b in zip(world.user_vec[user - 1], world.item_vec[item - 1], strict=True))
        logit = (cfg.affinity_scale * dot + cfg.popularity_weight * float(world.log_pop[item - 1])
                 - cfg.position_decay * math.log2(1 + position) + cfg.click_bias)
        return 1 / (1 + math.exp(-logit))

    # an empty slot (0) at position 1 collects nothing, and the item after it is still shown at position 2
    got = expected_clicks(world, np.array([1, 4]), np.array([[3, 0, 7], [7, 3, 5]]), when_s=world.start_s)
    np.testing.assert_allclose(got, [p(1, 3, 0) + p(1, 7, 2), p(4, 7, 0) + p(4, 3, 1) + p(4, 5, 2)], rtol=1e-12)


def test_the_generators_own_lists_expect_what_it_recorded(world, tiny_raw):
    """The generator writes each logged impression's true click probability: the same lists, scored here from their
    users, items, positions and times, expect the same clicks."""
    events = pl.read_parquet(tiny_raw / "events" / "*.parquet").filter(pl.col("event_type") == "impression")
    truth = pl.read_parquet(tiny_raw / "ground_truth" / "impressions" / "*.parquet", columns=["event_id", "p_click"])
    shown = events.join(truth, on="event_id").sort("request_id", "position")
    assert shown.height == events.height
    requests = shown.group_by("request_id", maintain_order=True).agg(
        "user_id", "item_id", "position", "p_click", pl.col("timestamp").min().dt.epoch("s").alias("at")).head(500)
    width = requests["item_id"].list.len().max()
    lists = np.zeros((requests.height, width), dtype=np.int64)
    for row, (items, positions) in enumerate(zip(requests["item_id"], requests["position"], strict=True)):
        lists[row, positions.to_numpy()] = items.to_numpy()
    got = expected_clicks(world, requests["user_id"].list.first().to_numpy(), lists, requests["at"].to_numpy())
    np.testing.assert_allclose(got, requests["p_click"].list.sum().to_numpy(), rtol=1e-5)


def test_the_oracles_lists_beat_random_and_bestseller_lists(world):
    rng = np.random.default_rng(1)
    users = np.arange(1, 21)
    allowed = np.flatnonzero(world.item_available) + 1
    best = oracle_lists(world, users, 10, allowed=allowed)
    assert best.shape == (20, 10) and np.isin(best, allowed).all()
    assert all(len(set(row)) == 10 for row in best)
    oracle = expected_clicks(world, users, best)
    for _ in range(50):
        random = np.stack([rng.choice(allowed, 10, replace=False) for _ in users])
        assert (oracle >= expected_clicks(world, users, random)).all()
    bestsellers = np.tile(allowed[np.argsort(-world.popularity[allowed - 1])][:10], (20, 1))
    assert (oracle >= expected_clicks(world, users, bestsellers)).all()


def test_ids_outside_the_shop_are_refused(world):
    with pytest.raises(ValueError, match=r"user id 0 is not in the generated shop \(ids 1\.\."):
        expected_clicks(world, np.array([0]), np.array([[1]]))
    with pytest.raises(ValueError, match="item id"):
        expected_clicks(world, np.array([1]), np.array([[world.cfg.n_items + 1]]))
    with pytest.raises(ValueError, match="2 users but 1 lists"):
        expected_clicks(world, np.array([1, 2]), np.array([[1, 2]]))
    with pytest.raises(ValueError, match="more than the"):
        oracle_lists(world, np.array([1]), 5, allowed=np.array([1, 2]))


def test_a_generated_datasets_world_is_the_one_its_ground_truth_recorded(tiny_dataset, tiny_raw):
    world = world_of(tiny_dataset)
    users = pl.read_parquet(tiny_raw / "ground_truth" / "users.parquet").sort("user_id")
    items = pl.read_parquet(tiny_raw / "ground_truth" / "items.parquet").sort("item_id")
    np.testing.assert_allclose(world.user_vec, np.stack(users["latent"].to_numpy()), atol=1e-6)
    np.testing.assert_allclose(world.item_vec, np.stack(items["latent"].to_numpy()), atol=1e-6)
    np.testing.assert_allclose(world.log_pop, items["log_popularity"].to_numpy(), atol=1e-9)


def test_taste_from_views_is_the_mean_vector_of_the_viewed_items(world):
    views = pl.DataFrame({"u": [2, 2, 2, 5], "i": [1, 4, 4, 9]})
    taste = taste_from_views(world, views, "u", "i")
    np.testing.assert_allclose(taste[1], (world.item_vec[0] + 2 * world.item_vec[3]) / 3)
    np.testing.assert_allclose(taste[4], world.item_vec[8])
    assert not taste[0].any()  # no views: no taste


def test_lists_from_viewed_taste_sit_between_a_bestseller_list_and_the_oracle(tiny_dataset, world):
    """The ceiling for what views reveal: on the tiny shop it beats popularity, and the oracle beats it."""
    views = pl.concat([tiny_dataset.read("retrieval", s).select(META_USER, META_ITEM) for s in ("train", "val")])
    users = np.unique(views[META_USER].to_numpy())[:200]
    estimated = taste_from_views(world, views, META_USER, META_ITEM)[users - 1]
    ceiling = expected_clicks(world, users, best_lists(world, estimated, 10)).mean()
    oracle = expected_clicks(world, users, oracle_lists(world, users, 10)).mean()
    assert oracle > ceiling
    bestsellers = views[META_ITEM].value_counts(sort=True)[META_ITEM].to_numpy()[:10]
    assert ceiling > expected_clicks(world, users, np.tile(bestsellers, (len(users), 1))).mean()


def test_a_shrunk_taste_is_the_mean_direction_trusted_by_the_number_of_views():
    mean = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -0.5]])
    counts = np.array([2, 0, 6])
    # user 0: direction (0.6, 0.8), length 1.5 * 2 / (2 + 2) = 0.75; user 1: no views, no taste;
    # user 2: direction (0, -1), length 1.5 * 6 / 8 = 1.125
    np.testing.assert_allclose(shrunk_taste(mean, counts, scale=1.5, prior=2.0),
                               [[0.45, 0.6], [0.0, 0.0], [0.0, -1.125]])


def test_the_view_ceiling_is_the_best_of_its_estimates_and_under_the_oracle(tiny_dataset, world):
    views = pl.concat([tiny_dataset.read("retrieval", s).select(META_USER, META_ITEM) for s in ("train", "val")])
    users = np.unique(views[META_USER].to_numpy())[:200]
    lists, (scale, prior) = view_ceiling_lists(world, views, META_USER, META_ITEM, users, 10)
    ceiling = expected_clicks(world, users, lists).mean()
    plain = best_lists(world, taste_from_views(world, views, META_USER, META_ITEM)[users - 1], 10)
    assert ceiling >= expected_clicks(world, users, plain).mean()
    assert ceiling < expected_clicks(world, users, oracle_lists(world, users, 10)).mean()
    if scale is not None:  # the chosen estimate's own lists are the ones returned
        counts = np.bincount(views[META_USER].to_numpy() - 1, minlength=world.cfg.n_users)[users - 1]
        mean = taste_from_views(world, views, META_USER, META_ITEM)[users - 1]
        np.testing.assert_array_equal(lists, best_lists(world, shrunk_taste(mean, counts, scale, prior), 10))


def test_a_perfect_ranker_orders_the_candidates_by_true_click_probability(world):
    """Hand-worked: the candidates' own click probabilities at one position, highest first, the rest dropped; a
    user with fewer candidates than slots gets empty ones."""
    candidates = [[9, 2, 5, 11, 3], [4]]
    when = world.start_s
    got = best_of(world, np.array([2, 6]), candidates, k=3, when_s=when)

    def at_top(user: int, item: int) -> float:
        return float(expected_clicks(world, np.array([user]), np.array([[item]]), when_s=when)[0])

    by_hand = sorted(candidates[0], key=lambda item: -at_top(2, item))[:3]
    assert got[0].tolist() == by_hand and got[1].tolist() == [4, 0, 0]
    # no ordering of the same candidates expects more clicks
    best = expected_clicks(world, np.array([2]), got[:1], when_s=when)[0]
    for other in ([9, 2, 5], [11, 3, 9], by_hand[::-1]):
        assert best >= expected_clicks(world, np.array([2]), np.array([other]), when_s=when)[0] - 1e-12
