"""Metrics against scikit-learn and hand-worked examples."""

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import ndcg_score, roc_auc_score

from recsys.evaluation.metrics import auc, catalogue_hits, log_loss, recall_ndcg, top_k


def test_auc_and_log_loss_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.random(2000) < 0.1
    s = rng.normal(size=2000) + y
    s[:100] = np.round(s[:100], 1)  # some ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    p = 1 / (1 + np.exp(-s))
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p), rel=1e-9)
    assert auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75  # worked: 3 of 4 pairs ordered right
    with pytest.raises(ValueError, match="needs both classes"):
        auc([1, 1], [0.2, 0.3])


def test_top_k_excludes_seen_items():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.1, 0.2, 0.3, 0.4]])
    ranked = top_k(lambda users: scores[torch.from_numpy(users)], 2, [np.array([0]), np.array([], dtype=int)], k=2,
                   chunk=1)
    assert ranked.tolist() == [[1, 3], [3, 2]]


def test_recall_and_ndcg_hand_worked_and_against_sklearn():
    ranked = np.array([[3, 1, 4, 0], [2, 0, 1, 3]])
    relevant = [np.array([1, 0]), np.array([3])]
    m = recall_ndcg(ranked, relevant, ks=(2, 4))
    # user 0: hit at rank 2 of 2 relevant -> recall@2 = 1/2; user 1: no hit in top 2
    assert m["recall@2"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["recall@4"] == pytest.approx((1.0 + 1.0) / 2)
    # NDCG@2 user 0: (1/log2(3)) / (1 + 1/log2(3)); user 1: 0
    assert m["ndcg@2"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)) / 2)
    # against sklearn: binary relevance, scores that produce the same ranking
    true = np.zeros((2, 5))
    for u, items in enumerate(relevant):
        true[u, items] = 1
    score = np.zeros((2, 5))
    for u, row in enumerate(ranked):
        score[u, row] = np.arange(len(row), 0, -1)
    assert m["ndcg@4"] == pytest.approx(ndcg_score(true, score, k=4))
    users_without = recall_ndcg(ranked, [np.array([1, 0]), np.array([], dtype=int)], ks=(2,))
    assert users_without["recall@2"] == 0.5  # a user with nothing to find does not count


def test_catalogue_hits_rank_each_positive_against_every_item_hand_worked():
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]])
    users = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    # user 0's item 0 scores 1.0, the best: rank 0. User 1's item 1 scores 0, under items 0 (1.0) and 2 (0.7):
    # rank 2. User 2's item 3 scores 0, under items 1 (1.0) and 2 (0.7), tied with item 0: rank 2 (ties count
    # for the positive). User 3's item is not in the catalogue.
    positives = torch.tensor([0, 1, 3, -1])
    assert catalogue_hits(users, items, positives, k=1).tolist() == [True, False, False, False]
    assert catalogue_hits(users, items, positives, k=2).tolist() == [True, False, False, False]
    assert catalogue_hits(users, items, positives, k=3).tolist() == [True, True, True, False]
    assert catalogue_hits(users, items, positives, k=100).tolist() == [True, True, True, False]
