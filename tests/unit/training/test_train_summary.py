"""What `recsys train` prints about a finished run."""

from recsys.cli.train import summary
from recsys.training.job import TrainResult


def _result(task: str, metrics: dict, baselines: dict, **extra) -> TrainResult:
    return TrainResult(task=task, dataset_id="ds-x", metrics=metrics, baselines=baselines, epoch_losses=[0.3, 0.2],
                       sharding={}, path="/runs/x", checkpoint="/runs/x/ckpt", resumed=False, **extra)


def test_the_ranker_is_shown_beside_its_baselines_within_requests_and_its_kept_epoch():
    text = summary(_result("dlrm", {"test/auc": 0.76, "test/gauc": 0.75, "test/ndcg@10": 0.6455, "val/auc": 0.7621},
                           {"popularity_auc": 0.70, "popularity_gauc": 0.69, "popularity_ndcg@10": 0.6249,
                            "logistic_ndcg@10": 0.6434, "oracle_auc": 0.80},
                           monitor="val/auc", kept_epoch=1))
    assert ("test NDCG@10 within requests: model 0.6455 | popularity 0.6249 | logistic regression 0.6434\n"
            in text + "\n")
    assert "early stopping on val/auc: kept epoch 1 of the 2 trained (its val/auc 0.7621)" in text
    assert "oracle 0.8000 (model reaches 86.7% of the oracle's lift over chance)" in text  # (0.76 - .5) / (.8 - .5)


def test_the_retrievers_ndcg_is_not_called_a_ranking_within_requests():
    text = summary(_result("two-tower", {"test/ndcg@10": 0.195, "test/recall@100": 0.5445},
                           {"popularity_ndcg@10": 0.1967, "popularity_recall@100": 0.5612,
                            "oracle_ndcg@10": 0.2455}))
    assert "within requests" not in text and "lift over chance" not in text
    assert "test recall@100: model 0.5445 | popularity 0.5612 (0.97x)" in text
