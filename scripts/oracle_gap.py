#!/usr/bin/env python
"""How much of the oracle's ranking AUC the observed data can support, on a generated dataset.

The oracle scores test impressions with each user's true taste vector. A model never sees it: it has
to infer a user's taste from what they did. This scores the same impressions with the generator's own
click model twice — with the true taste, and with the taste estimated as the mean true vector of the
items the user viewed before the test period (a model that learnt every item perfectly could do this
much from views alone) — so the gap between the oracle and a trained model can be read against it.

    .venv/bin/python scripts/oracle_gap.py [--dataset runs/datasets/<id>]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import polars as pl

from recsys.data.dataset import Dataset
from recsys.data.features import META_ITEM, META_USER
from recsys.evaluation.baselines import ground_truth_dir
from recsys.evaluation.metrics import auc
from recsys.schema import load_schema
from recsys.training.job import newest_dataset


def vectors(table: pl.DataFrame, id_column: str, column: str) -> np.ndarray:
    ids = table[id_column].to_numpy()
    out = np.zeros((ids.max() + 1, len(table[column][0])), dtype=np.float64)
    out[ids] = np.stack(table[column].to_numpy())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--dataset", help="a dataset built from generated data (default: the newest)")
    args = p.parse_args(argv)
    schema = load_schema()
    dataset = Dataset.open(args.dataset or newest_dataset(), schema)
    truth = ground_truth_dir(dataset)
    if truth is None:
        print("no generator ground truth beside this dataset's raw data", file=sys.stderr)
        return 2
    cfg = json.loads((truth / "params.json").read_text())["config"]
    items = pl.read_parquet(truth / "items.parquet")
    item_vec = vectors(items, "item_id", "latent")
    log_pop = np.zeros(len(item_vec))
    log_pop[items["item_id"].to_numpy()] = items["log_popularity"].to_numpy()
    true_taste = vectors(pl.read_parquet(truth / "users.parquet"), "user_id", "latent")

    label = schema.label("dlrm").name
    test = dataset.read("ranking", "test").select(META_USER, META_ITEM, label, "position")
    users, shown, y = test[META_USER].to_numpy(), test[META_ITEM].to_numpy(), test[label].to_numpy()
    views = pl.concat([pl.read_parquet(dataset.shards("retrieval", s), columns=[META_USER, META_ITEM])
                       for s in ("train", "val")])
    viewed_taste = np.zeros_like(true_taste)
    counts = np.zeros(len(true_taste))
    np.add.at(viewed_taste, views[META_USER].to_numpy(), item_vec[views[META_ITEM].to_numpy()])
    np.add.at(counts, views[META_USER].to_numpy(), 1)
    viewed_taste /= np.maximum(counts, 1)[:, None]

    rest = cfg["popularity_weight"] * log_pop[shown] - cfg["position_decay"] * np.log2(1 + test["position"].to_numpy())
    print(f"{len(y):,} test impressions; users viewed a median of {np.median(counts[counts > 0]):.0f} items before")
    for name, taste in (("true taste (the oracle)", true_taste), ("taste from viewed items", viewed_taste)):
        score = cfg["affinity_scale"] * (taste[users] * item_vec[shown]).sum(axis=1) + rest
        print(f"  {name:<26} test AUC {auc(y, score):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
