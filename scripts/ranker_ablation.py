"""Ranker ablations on the list metric: the DLRM trained in one process (no Ray, no sharding: a quick loop for
trying ideas), scored each epoch by validation AUC, mean prediction against the click rate, and the lists it would
rank from a retrieval export's candidates (`recsys.evaluation.list_quality`: expected clicks under the generated
shop's click model, distinct items over the lists, share of lists holding the most common item).

    python scripts/ranker_ablation.py --dataset runs/datasets/<id> --retrieval runs/train/<two-tower run>/export \\
        [--epochs 2] [--embedding-lr 0.01] [--without user_id,position] [--interaction dot|dcn]

``--without`` feeds the named inputs as missing (index 0 / the column's zero) in training, validation and lists:
what the ranker gains or loses without them, before the schema changes. Figures: scripts/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import polars as pl
import torch
from sklearn.metrics import roc_auc_score
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recsys.data.dataset import Dataset
from recsys.evaluation import list_quality
from recsys.evaluation.expected_clicks import best_of, world_of
from recsys.export.serving import ServingRanker, input_specs
from recsys.models.config import DLRMConfig
from recsys.models.dlrm import Ranker
from recsys.models.inputs import make_batch
from recsys.online.features import OnlineFeatures
from recsys.online.retrieval import QueryRetriever
from recsys.schema import load_schema
from recsys.training.data import batches


class EagerRanker:
    """`recsys.online.ranking.OnnxRanker`'s interface over the PyTorch model (the serving module, before export)."""

    def __init__(self, model: Ranker, without: set[str]):
        self.module, self.without = ServingRanker(model).eval(), without
        self.names = [s.name for s in input_specs(model.spec)]

    def scores(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[n] * 0 if n in self.without else inputs[n]))
                   for n in self.names]
        with torch.no_grad():
            return self.module(*tensors).numpy().reshape(-1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--dataset", required=True, help="a dataset built from generated data")
    p.add_argument("--retrieval", required=True, help="a retrieval export of the same dataset")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--dense-lr", type=float, default=0.001)
    p.add_argument("--embedding-lr", type=float, default=0.01)
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--interaction", default="dot", choices=["dot", "dcn"])
    p.add_argument("--without", default="", help="comma-separated ranker inputs fed as missing")
    p.add_argument("--users", type=int, default=500, help="known users whose lists are scored (default 500)")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    schema = load_schema()
    dataset = Dataset.open(args.dataset, schema)
    world = world_of(dataset)
    if world is None:
        print(f"dataset {dataset.id} was not built from generated data: no click model to score lists with",
              file=sys.stderr)
        return 2
    model = Ranker(schema, dataset.manifest.cardinalities,
                   DLRMConfig(embedding_dim=args.embedding_dim, dense_layers=(64, args.embedding_dim),
                              interaction=args.interaction))
    without = {name for name in args.without.split(",") if name}
    unknown = without - set(model.spec.columns)
    if unknown:
        print(f"--without names {sorted(unknown)}, which are not ranker inputs ({model.spec.columns})", file=sys.stderr)
        return 2

    def read(split: str) -> pl.DataFrame:
        frame = dataset.read("ranking", split).select(model.spec.columns)
        return frame.with_columns([pl.lit(0, dtype=frame[n].dtype).alias(n) for n in without]) if without else frame

    train, val = read("train"), read("val")
    model.start_at_click_rate(float(train["click"].mean()))
    apply_optimizer_in_backward(torch.optim.Adagrad, [w for n, w in model.named_parameters() if "embedding_bags" in n],
                                {"lr": args.embedding_lr})
    optimiser = torch.optim.Adam([w for _, w in in_backward_optimizer_filter(model.named_parameters())],
                                 lr=args.dense_lr)
    features = OnlineFeatures(dataset, schema, 10)
    users = list_quality.known_users(features, args.users, 0)
    retriever = QueryRetriever(args.retrieval, schema.hash)
    labels = val["click"].to_numpy()
    print(f"{train.height:,} training rows, {val.height:,} validation rows, {len(users)} users' top-10 lists")
    for epoch in range(args.epochs):
        start = time.perf_counter()
        model.train()
        for rows in batches(train, args.batch_size, shuffle_seed=epoch):
            batch = make_batch(rows, model.spec)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            p_click = np.concatenate([torch.sigmoid(model(make_batch(rows, model.spec))).numpy()
                                      for rows in batches(val, 8192)])
        lists, ranked_from = list_quality.offline_lists(features, retriever, EagerRanker(model, without), users, 10,
                                                        100)
        scores = list_quality.compare(world, users, {
            "model": lists, list_quality.BESTSELLER: np.tile(np.array(features.popular[:10]), (len(users), 1)),
            list_quality.ORACLE: best_of(world, users, ranked_from, 10)})  # (the lift: up to perfect ranking)
        s = scores[0]
        print(f"epoch {epoch + 1} ({time.perf_counter() - start:.0f} s): validation AUC "
              f"{roc_auc_score(labels, p_click):.4f}, mean p {p_click.mean():.4f} at a rate of {labels.mean():.4f}; "
              f"lists: {s.expected_clicks:.3f} expected clicks, {s.distinct_items} items, top item in "
              f"{s.top_item_share:.0%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
