"""Ranking evaluation over every row of a split: no row dropped whatever the batch size, metrics as sklearn's."""

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from recsys.evaluation.ranking import ranking_metrics, ranking_report, ranking_scores
from recsys.models.config import DLRMConfig
from recsys.models.dlrm import Ranker
from recsys.models.inputs import make_batch
from recsys.online.features import serving_context


@pytest.fixture(scope="module")
def ranker(tiny_dataset, schema):
    torch.manual_seed(0)
    config = DLRMConfig(embedding_dim=8, dense_layers=(16, 8), over_layers=(16, 1))
    return Ranker(schema, tiny_dataset.manifest.cardinalities, config).eval()


def test_every_row_is_scored_whatever_the_batch_size(tiny_dataset, ranker):
    rows = tiny_dataset.read("ranking", "test")
    with torch.no_grad():
        at_once = torch.sigmoid(ranker(make_batch(rows, ranker.spec))).numpy().reshape(-1)
    batched = ranking_scores(ranker, rows, batch_size=1000)  # the last batch is partial
    assert batched.shape == (rows.height,) and rows.height % 1000
    np.testing.assert_allclose(batched, at_once, atol=1e-6)


def test_the_report_is_sklearns_auc_and_log_loss_over_all_rows(tiny_dataset, ranker):
    rows = tiny_dataset.read("ranking", "test")
    report = ranking_report(ranker, rows, "click", batch_size=999)
    labels, scores = rows["click"].to_numpy(), ranking_scores(ranker, rows, batch_size=999)
    assert report["test/rows"] == tiny_dataset.manifest.splits["ranking"]["test"]["rows"]
    assert report["test/auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert report["test/logloss"] == pytest.approx(log_loss(labels, scores), abs=1e-6)  # sklearn: in float32


def test_one_class_has_no_auc_and_mismatched_or_no_rows_are_refused():
    assert set(ranking_metrics(np.ones(3), np.full(3, 0.9), prefix="val")) == {"val/logloss", "val/rows"}
    with pytest.raises(ValueError, match="3 labels but 2 scores"):
        ranking_metrics(np.ones(3), np.full(2, 0.9))
    with pytest.raises(ValueError, match="no test rows to evaluate"):
        ranking_metrics(np.zeros(0), np.zeros(0))


def test_the_reports_gauc_is_the_impression_weighted_mean_of_each_users_sklearn_auc(tiny_dataset, ranker):
    rows = tiny_dataset.read("ranking", "test")
    report = ranking_report(ranker, rows, "click")
    scored = rows.select("_user", "click").with_columns(score=ranking_scores(ranker, rows))
    aucs, weights = [], []
    for (_,), user in scored.group_by(["_user"]):
        if 0 < user["click"].sum() < user.height:
            aucs.append(roc_auc_score(user["click"].to_numpy(), user["score"].to_numpy()))
            weights.append(user.height)
    assert len(aucs) > 10
    assert report["test/gauc"] == pytest.approx(np.average(aucs, weights=weights), abs=1e-12)
    # one user who only clicked: no GAUC, and no error
    assert "test/gauc" not in ranking_metrics(np.array([1, 1, 0]), np.array([.9, .8, .1]), users=np.array([1, 1, 2]))


def test_ndcg_within_requests_scores_every_candidate_at_the_serving_position(tiny_dataset, ranker, schema):
    rows = tiny_dataset.read("ranking", "test")
    assert rows["_request"].null_count() == 0  # generated impressions all name their request
    context = serving_context(schema, tiny_dataset.encoders(schema))
    assert context == {"position": 1}  # slot 0, encoded (index 0 is kept for a missing value)
    report = ranking_report(ranker, rows, "click", context=context)
    served = rows.with_columns(position=1)
    scores = ranking_scores(ranker, served)
    # by hand (numpy): per request with a click, the shown items ordered by the served score, clicks last on ties
    ndcgs = []
    for request in np.unique(rows["_request"].to_numpy()):
        mine = rows["_request"].to_numpy() == request
        labels, s = rows["click"].to_numpy()[mine], scores[mine]
        if not labels.any():
            continue
        order = np.lexsort((labels, -s))[:10]
        discount = 1 / np.log2(np.arange(2, 2 + len(order)))
        ideal = np.sort(labels)[::-1][:10]
        ndcgs.append((labels[order] * discount).sum() / (ideal * discount[: len(ideal)]).sum())
    assert report["test/ndcg@10"] == pytest.approx(np.mean(ndcgs), abs=1e-9)
    at_logged = ranking_report(ranker, rows, "click")["test/ndcg@10"]  # no context: the logged positions
    assert at_logged != pytest.approx(report["test/ndcg@10"], abs=1e-6)
