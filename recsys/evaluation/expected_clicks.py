"""The list metric on a generated shop: how many clicks a list can expect under the generator's own click model.

The generator knows every shopper's true taste (`recsys.data.generate.ShopWorld`): a list of items shown at
positions 0, 1, … to a user is expected to collect ``sum_p P(click | user, item_p, position p)`` clicks, with no
coin flips. That scores any list — what the app served, a bestseller list, the oracle's — on the same footing,
which AUC over logged impressions cannot (it only sees the lists that were shown).

Ids are the shop's (1-based, as in its export); ``0`` in a list is an empty slot.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl

from recsys.config import GeneratorConfig, from_dict
from recsys.data.dataset import Dataset
from recsys.data.generate import ShopWorld
from recsys.evaluation.baselines import ground_truth_dir


def world_of(dataset: Dataset) -> ShopWorld | None:
    """The generated shop a dataset was built from, rebuilt from its seed and config (None for a real shop's)."""
    truth = ground_truth_dir(dataset)
    if truth is None:
        return None
    params = json.loads((truth / "params.json").read_text())
    return ShopWorld(from_dict(GeneratorConfig, params["config"], where="ground_truth/params.json"))


def _indices(ids: np.ndarray, n: int, what: str, empty_slots: bool = False) -> np.ndarray:
    """0-based indices of shop ids 1..n (with ``empty_slots``, 0 passes too, as -1)."""
    ids = np.asarray(ids, dtype=np.int64)
    bad = (ids < (0 if empty_slots else 1)) | (ids > n)
    if bad.any():
        raise ValueError(f"{what} id {int(ids[bad][0])} is not in the generated shop (ids 1..{n})")
    return ids - 1


def expected_clicks(world: ShopWorld, users: np.ndarray, lists: np.ndarray,
                    when_s: float | np.ndarray | None = None) -> np.ndarray:
    """(n,) expected clicks of each list.

    Args:
        users: (n,) shop user ids.
        lists: (n, k) shop item ids, best first (position = column); 0 marks an empty slot.
        when_s: the time each list is shown (unix seconds; scalar or (n,)); a user's taste after the shop's
            drift day is its shifted one. Default: the end of the generated period.
    """
    lists = np.atleast_2d(np.asarray(lists, dtype=np.int64))
    users = _indices(np.asarray(users).reshape(-1), world.cfg.n_users, "user")
    if lists.shape[0] != len(users):
        raise ValueError(f"{len(users)} users but {lists.shape[0]} lists")
    filled = lists > 0
    items = np.where(filled, _indices(lists, world.cfg.n_items, "item", empty_slots=True), 0)  # (n, k)
    when = np.broadcast_to(np.asarray(world.end_s if when_s is None else when_s, dtype=np.float64), users.shape)
    taste = world.user_vectors(users, when)  # (n, d)
    affinity = np.einsum("nd,nkd->nk", taste, world.item_vec[items])  # (n, k)
    positions = np.broadcast_to(np.arange(lists.shape[1]), lists.shape)
    return (world.click_prob(affinity, items, positions) * filled).sum(axis=1)


def oracle_lists(world: ShopWorld, users: np.ndarray, k: int, when_s: float | None = None,
                 allowed: np.ndarray | None = None) -> np.ndarray:
    """(n, k) each user's k items of highest true click probability (shop ids), best first: the best k items any
    model could show (the position term is the same for every item), in their best order wherever click
    probabilities are under one half. ``allowed``: shop item ids that may be shown (e.g. the available ones);
    default every item."""
    users = _indices(np.asarray(users).reshape(-1), world.cfg.n_users, "user")
    when = np.full(len(users), world.end_s if when_s is None else when_s, dtype=np.float64)
    return best_lists(world, world.user_vectors(users, when), k, allowed)


def taste_from_views(world: ShopWorld, views: pl.DataFrame, user_column: str, item_column: str) -> np.ndarray:
    """(n_users, d) each user's taste estimated as the mean true vector of the items they viewed (shop ids in
    ``views``): what a model that had learnt every item perfectly could know of a user from views alone. Users
    without a view get a zero vector (their lists fall back to popularity)."""
    users = _indices(views[user_column].to_numpy(), world.cfg.n_users, "user")
    items = _indices(views[item_column].to_numpy(), world.cfg.n_items, "item")
    taste = np.zeros_like(world.user_vec)
    np.add.at(taste, users, world.item_vec[items])
    return taste / np.maximum(views_per_user(world, views, user_column), 1)[:, None]


def views_per_user(world: ShopWorld, views: pl.DataFrame, user_column: str) -> np.ndarray:
    """(n_users,) how many of ``views`` each user made."""
    return np.bincount(_indices(views[user_column].to_numpy(), world.cfg.n_users, "user"), minlength=world.cfg.n_users)


def shrunk_taste(mean: np.ndarray, counts: np.ndarray, scale: float, prior: float) -> np.ndarray:
    """Each user's mean viewed vector as a direction (true tastes are unit vectors), of length
    ``scale * n / (n + prior)`` for a user of ``n`` views: the fewer the views, the less it is trusted."""
    norm = np.linalg.norm(mean, axis=1, keepdims=True)
    direction = np.divide(mean, norm, out=np.zeros_like(mean), where=norm > 0)
    return direction * (scale * counts / np.maximum(counts + prior, 1e-12))[:, None]


# (scale, prior) pairs the view-based ceiling tries; (None, None) is the plain mean vector
SHRINKAGE = ((None, None), *((s, c) for s in (0.5, 0.75, 1.0, 1.25, 1.5) for c in (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)))


def view_ceiling_lists(world: ShopWorld, views: pl.DataFrame, user_column: str, item_column: str, users: np.ndarray,
                       k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, tuple]:
    """(n, k) lists for ``users`` from the best taste estimate of the items they viewed, and its (scale, prior):
    among the plain mean vector (`taste_from_views`) and its shrunk versions (`shrunk_taste`, each pair of
    `SHRINKAGE`), the one whose lists expect the most clicks for these very users. Tuned on the users it scores,
    with every item's true vector known: an optimistic ceiling for a model that learns taste from views."""
    mean = taste_from_views(world, views, user_column, item_column)[users - 1]
    counts = views_per_user(world, views, user_column)[users - 1]
    best, best_clicks, best_pair = None, -np.inf, (None, None)
    for scale, prior in SHRINKAGE:
        taste = mean if scale is None else shrunk_taste(mean, counts, scale, prior)
        lists = best_lists(world, taste, k, allowed)
        clicks = expected_clicks(world, users, lists).mean()
        if clicks > best_clicks:
            best, best_clicks, best_pair = lists, clicks, (scale, prior)
    return best, best_pair


def best_lists(world: ShopWorld, taste: np.ndarray, k: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """(n, k) shop item ids of the highest click logits for tastes ``taste`` (n, d), best first."""
    cfg = world.cfg
    logits = cfg.affinity_scale * taste @ world.item_vec.T + cfg.popularity_weight * world.log_pop  # (n, n_items)
    if allowed is not None:
        mask = np.full(cfg.n_items, -np.inf)
        mask[_indices(allowed, cfg.n_items, "item")] = 0.0
        logits = logits + mask
    if k > np.isfinite(logits[0]).sum():
        raise ValueError(f"k={k} is more than the {int(np.isfinite(logits[0]).sum())} items that may be shown")
    best = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(logits, best, axis=1), axis=1)
    return np.take_along_axis(best, order, axis=1) + 1


def best_of(world: ShopWorld, users: np.ndarray, candidates: list[list[int]], k: int,
            when_s: float | None = None) -> np.ndarray:
    """(n, k) each user's ``candidates`` (shop item ids) ordered by true click probability, the best k (0 where a
    user has fewer): the best list a perfect ranker could build from what retrieval found."""
    users = _indices(np.asarray(users).reshape(-1), world.cfg.n_users, "user")
    taste = world.user_vectors(users, np.full(len(users), world.end_s if when_s is None else when_s))
    out = np.zeros((len(users), k), dtype=np.int64)
    for row, found in enumerate(candidates):
        items = _indices(np.asarray(found, dtype=np.int64), world.cfg.n_items, "item")
        logits = world.cfg.affinity_scale * world.item_vec[items] @ taste[row] + world.cfg.popularity_weight * \
            world.log_pop[items]
        best = items[np.argsort(-logits, kind="stable")[:k]]
        out[row, : len(best)] = best + 1
    return out
