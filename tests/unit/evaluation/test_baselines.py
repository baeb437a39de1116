import numpy as np
import polars as pl

from recsys.evaluation.baselines import ground_truth_dir, ranking_baselines
from recsys.evaluation.lists import ndcg_in_requests
from recsys.evaluation.metrics import auc


def test_oracle_and_popularity_on_generated_data(tiny_dataset, tiny_raw, schema):
    assert ground_truth_dir(tiny_dataset) == tiny_raw / "ground_truth"
    b = ranking_baselines(tiny_dataset, schema)
    assert set(b) == {"popularity_auc", "popularity_gauc", "logistic_auc", "logistic_gauc", "logistic_logloss",
                      "oracle_auc", "oracle_gauc", "oracle_logloss", "rows", "popularity_ndcg@10",
                      "logistic_ndcg@10", "popularity_val_auc", "logistic_val_auc"}
    assert b["rows"] == tiny_dataset.manifest.splits["ranking"]["test"]["rows"]  # every row of the split
    # the oracle is the generator's own probability: it ranks far better than chance and than popularity
    assert b["oracle_auc"] > 0.65 and b["oracle_auc"] > b["popularity_auc"]
    assert b["oracle_gauc"] > b["popularity_gauc"] > 0.5  # within a user's impressions too
    assert b["oracle_auc"] > b["logistic_auc"] > b["popularity_auc"]  # the floor a click model must clear
    val = tiny_dataset.read("ranking", "val")  # registration's floor: the same baselines on validation
    assert b["popularity_val_auc"] == auc(val["click"].to_numpy(), val["item_views_7d"].to_numpy())
    assert b["logistic_val_auc"] > b["popularity_val_auc"] > 0.5
    test = tiny_dataset.read("ranking", "test")
    truth = pl.read_parquet(tiny_raw / "ground_truth" / "impressions" / "*.parquet")
    joined = test.join(truth, left_on="_event_id", right_on="event_id")
    assert b["oracle_auc"] == auc(joined["click"].to_numpy(), joined["p_click"].to_numpy())
    assert np.isfinite(b["oracle_logloss"])
    # within each request, the shown items re-ordered by their 7-day views
    assert b["popularity_ndcg@10"] == ndcg_in_requests(test["_request"].to_numpy(), test["click"].to_numpy(),
                                                       test["item_views_7d"].to_numpy())
    assert 0 < b["popularity_ndcg@10"] < 1 and 0 < b["logistic_ndcg@10"] < 1
