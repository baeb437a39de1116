"""List metrics against hand-worked examples."""

import math

import numpy as np
import pytest

from recsys.evaluation.lists import gauc, list_coverage, ndcg_in_requests
from recsys.evaluation.metrics import auc


def test_gauc_weights_each_users_auc_by_their_impressions_and_skips_one_class_users():
    users = np.array([1, 1, 1, 2, 2, 3, 3, 4, 4])
    labels = np.array([1, 0, 0, 0, 1, 0, 0, 1, 0])
    scores = np.array([.9, .5, .1, .8, .2, .7, .6, .4, .4])
    # user 1: its click above both skips, AUC 1 (3 rows); user 2: its click below, 0 (2 rows); user 3 never clicked
    # (left out); user 4: a tie, 0.5 (2 rows) -> (3 * 1 + 2 * 0 + 2 * 0.5) / 7
    assert gauc(users, labels, scores) == pytest.approx(4 / 7)


def test_gauc_of_one_user_is_their_auc_and_a_popularity_score_can_beat_it_overall():
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 200), rng.random(200)
    assert gauc(np.zeros(200), labels, scores) == pytest.approx(auc(labels, scores))
    # two users, each ranked perfectly backwards, but the clicky user's items score higher: a global AUC above
    # 0.5 that a per-user view shows is wrong for both
    users = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    scores = np.array([.6, .6, .6, .9, .1, .1, .1, .05])
    assert auc(labels, scores) > 0.5 and gauc(users, labels, scores) == 0.0


def test_gauc_without_a_user_of_both_classes_is_an_error():
    with pytest.raises(ValueError, match="a click and a non-click"):
        gauc(np.array([1, 1, 2]), np.array([0, 0, 1]), np.array([.1, .2, .3]))
    with pytest.raises(ValueError, match="same rows"):
        gauc(np.array([1, 1]), np.array([0, 1]), np.array([.1]))


def test_ndcg_in_requests_by_hand():
    requests = np.array([7, 7, 7, 8, 8, 9, 9])
    labels = np.array([0, 1, 0, 1, 0, 0, 0])
    scores = np.array([.3, .2, .1, .9, .1, .5, .4])
    # request 7: its click ranked second -> 1 / log2(3); request 8: first -> 1; request 9 has no click (left out)
    assert ndcg_in_requests(requests, labels, scores) == pytest.approx((1 / math.log2(3) + 1) / 2)
    # k=1: request 7's click falls outside the cut-off
    assert ndcg_in_requests(requests, labels, scores, k=1) == pytest.approx(0.5)


def test_ndcg_ties_go_against_the_model():
    # every item scored the same: the click is placed last, whatever order the rows came in
    for labels in ([1, 0, 0], [0, 0, 1]):
        assert ndcg_in_requests(np.zeros(3), np.array(labels), np.full(3, .5)) == pytest.approx(1 / math.log2(4))


def test_list_coverage_counts_distinct_items_and_the_top_items_share():
    cover = list_coverage([[5, 1, 2], [5, 3, 3], [4, 6, 7], [5, 8, 9]])
    assert (cover.lists, cover.distinct_items, cover.top_item, cover.top_item_share) == (4, 9, 5, 0.75)
    assert cover.as_metrics("served") == {"served/distinct_items": 9.0, "served/top_item_share": 0.75}
    with pytest.raises(ValueError, match="no lists"):
        list_coverage([])
