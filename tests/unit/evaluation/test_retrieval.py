"""Retrieval evaluation on the tiny dataset: the task's sets, the baselines, and a model scored end to end."""

import numpy as np
import polars as pl
import pytest
import torch

from recsys.data.features import META_ITEM, META_USER
from recsys.evaluation.metrics import catalogue_hits
from recsys.evaluation.retrieval import (
    evaluate,
    oracle_scorer,
    popularity_catalogue_recall,
    popularity_scorer,
    retrieval_report,
    retrieval_task,
    two_tower_scorer,
)
from recsys.models.config import TwoTowerConfig
from recsys.models.two_tower import TwoTower


@pytest.fixture(scope="module")
def task(tiny_dataset):
    return retrieval_task(tiny_dataset)


def _views(dataset, *splits):
    return pl.concat(pl.read_parquet(dataset.shards("retrieval", s), columns=[META_USER, META_ITEM]) for s in splits)


def test_relevant_items_are_the_test_views_not_seen_before(tiny_dataset, task):
    items = task.items[META_ITEM].to_numpy()
    assert task.items.height == tiny_dataset.at_test_start("items").height  # every item is a candidate
    test, before = _views(tiny_dataset, "test"), _views(tiny_dataset, "train", "val")
    for row in range(0, task.users.height, 7):
        user = task.users[META_USER][row]
        seen = set(before.filter(pl.col(META_USER) == user)[META_ITEM])
        new = set(test.filter(pl.col(META_USER) == user)[META_ITEM]) - seen
        assert set(items[task.relevant[row]]) == new and new
        assert set(items[task.exclude[row]]) == seen
    assert task.users.height == len(task.relevant) == len(task.exclude)


def test_sampled_users_are_a_seeded_subset(tiny_dataset, task):
    a, b = retrieval_task(tiny_dataset, max_users=20, seed=1), retrieval_task(tiny_dataset, max_users=20, seed=1)
    assert a.users.height == 20 and a.users[META_USER].to_list() == b.users[META_USER].to_list()
    assert set(a.users[META_USER]) <= set(task.users[META_USER])


def test_popularity_ranks_the_most_viewed_items_first(tiny_dataset, task):
    scores = popularity_scorer(tiny_dataset, task)(np.array([0, 1]))
    assert torch.equal(scores[0], scores[1])  # the same list for everyone
    counts = _views(tiny_dataset, "train", "val")[META_ITEM].value_counts(sort=True)
    top = task.items[META_ITEM][int(torch.argmax(scores[0]))]
    assert top == counts[META_ITEM][0]


def test_the_oracle_beats_popularity_and_a_random_ranking(tiny_dataset, task):
    oracle = evaluate(task, oracle_scorer(tiny_dataset, task))
    popular = evaluate(task, popularity_scorer(tiny_dataset, task))
    rng = torch.Generator().manual_seed(0)
    random = evaluate(task, lambda rows: torch.rand(len(rows), task.items.height, generator=rng))
    assert oracle["recall@100"] > popular["recall@100"] > random["recall@100"]
    assert oracle["ndcg@10"] > random["ndcg@10"]


def test_a_two_tower_model_is_scored_against_every_item(tiny_dataset, schema, task):
    torch.manual_seed(0)
    model = TwoTower(schema, tiny_dataset.manifest.cardinalities, TwoTowerConfig(embedding_dim=8, output_dim=8)).eval()
    scores = two_tower_scorer(model, task)(np.arange(3))
    assert scores.shape == (3, task.items.height)
    assert torch.all(scores.abs() <= 1 + 1e-5)  # cosine similarities of unit vectors
    metrics, baselines = retrieval_report(model, tiny_dataset, max_users=50)
    assert metrics["test/retrieval_users"] == 50
    assert {f"test/{m}@{k}" for m in ("recall", "ndcg") for k in (10, 50, 100)} <= set(metrics)
    assert {"popularity_recall@100", "oracle_recall@100"} <= set(baselines)


def test_popularity_scored_as_the_two_tower_is_validated(tiny_dataset, schema):
    """popularity_val_recall@K is the two-tower's val/recall@K for a list ordered by training views: recomputed here
    through the metric training uses (`catalogue_hits`), with a 1-d "user" that prefers what was viewed more."""
    item = schema.item_id.name
    catalogue = tiny_dataset.at_test_start("items")[item].to_numpy()
    views = tiny_dataset.read("retrieval", "train")[item].to_list()
    counts = np.array([views.count(i) for i in catalogue], dtype=np.float32)
    row = {int(i): r for r, i in enumerate(catalogue)}
    positives = torch.tensor([row.get(int(i), -1) for i in tiny_dataset.read("retrieval", "val")[item].to_list()])
    for k in (1, 10, 100):
        hits = catalogue_hits(torch.ones(len(positives), 1), torch.from_numpy(counts)[:, None], positives, k)
        assert popularity_catalogue_recall(tiny_dataset, item, k) == pytest.approx(float(hits.float().mean()))
    assert 0 < popularity_catalogue_recall(tiny_dataset, item, 10) < popularity_catalogue_recall(tiny_dataset, item,
                                                                                                   100) < 1
