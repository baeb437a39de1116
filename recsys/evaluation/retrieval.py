"""Retrieval evaluation: recall@K and NDCG@K against every item, beside popularity and the oracle.

The protocol is "deploy at the start of the test period": users and items are encoded as they were
when the test period began (`Dataset.at_test_start`), every item of the catalogue is a candidate
(brute-force scoring), a user's relevant items are those they viewed during the test period, and
the items they viewed before it are excluded from their ranking (and so from their relevant set:
they could never be found). Users without a new item to find are not evaluated.

Beside the model: the popularity baseline (most-viewed items before the test period) and, on
generated data, the oracle, which scores items with the generator's own view model
(``log popularity + 2 * affinity_scale * <user, item>`` from the latent vectors, the taste in force
at the test start): the ranking no model can beat on average.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl
import torch

from recsys.data.dataset import Dataset
from recsys.data.features import META_ITEM, META_USER
from recsys.evaluation.baselines import ground_truth_dir
from recsys.evaluation.metrics import recall_ndcg, top_k

KS = (10, 50, 100)
CANDIDATE = "_candidate"  # row of an item in the candidate table


@dataclass
class RetrievalTask:
    users: pl.DataFrame  # evaluated users as of the test start, one row each
    items: pl.DataFrame  # every item as of the test start; row i is candidate i
    relevant: list[np.ndarray]  # per user, candidates viewed in the test period (and not before)
    exclude: list[np.ndarray]  # per user, candidates viewed before the test period

    def encoded_with(self, users: pl.DataFrame, items: pl.DataFrame) -> RetrievalTask:
        """The same users, candidates (in the same order) and relevant items, with the model inputs taken from
        ``users`` and ``items`` (tables keyed by ``_user`` / ``_item``, encoded with another dataset's encoders).

        Raises ValueError naming the users or items those tables lack.
        """
        def rows(own: pl.DataFrame, other: pl.DataFrame, key: str) -> pl.DataFrame:
            found = own.select(key).join(other, on=key, how="left", maintain_order="left", coalesce=True)
            missing = own.select(key).join(other.select(key), on=key, how="anti")[key]
            if len(missing):
                raise ValueError(f"{len(missing)} of the task's {own.height} {key} rows are not in the table to "
                                 f"encode them with (first: {missing.head(5).to_list()})")
            return found

        return RetrievalTask(users=rows(self.users, users, META_USER), items=rows(self.items, items, META_ITEM),
                             relevant=self.relevant, exclude=self.exclude)


def _per_user(pairs: pl.DataFrame, users: pl.Series) -> list[np.ndarray]:
    grouped = pairs.group_by(META_USER).agg(pl.col(CANDIDATE).unique())
    lists = users.to_frame().join(grouped, on=META_USER, how="left")[CANDIDATE]
    return [np.asarray(x if x is not None else [], dtype=np.int64) for x in lists.to_list()]


def retrieval_task(dataset: Dataset, max_users: int | None = None, seed: int = 0) -> RetrievalTask:
    """The test split as a retrieval task; ``max_users`` samples that many users (seeded)."""
    items = dataset.at_test_start("items").sort(META_ITEM).with_row_index(CANDIDATE)
    candidates = items.select(META_ITEM, pl.col(CANDIDATE).cast(pl.Int64))

    def views(*splits: str) -> pl.DataFrame:
        frames = [pl.read_parquet(dataset.shards("retrieval", s), columns=[META_USER, META_ITEM]) for s in splits]
        return pl.concat(frames).join(candidates, on=META_ITEM, how="inner").select(META_USER, CANDIDATE)

    test, before = views("test"), views("train", "val")
    new = test.join(before, on=[META_USER, CANDIDATE], how="anti")
    users = new[META_USER].unique().sort()
    if max_users is not None and len(users) > max_users:
        users = users.sample(max_users, seed=seed).sort()
    table = dataset.at_test_start("users")
    return RetrievalTask(users=users.to_frame().join(table, on=META_USER, how="left", maintain_order="left"),
                         items=items.drop(CANDIDATE), relevant=_per_user(new, users),
                         exclude=_per_user(before, users))


def evaluate(task: RetrievalTask, score: Callable[[np.ndarray], torch.Tensor],
             ks: tuple[int, ...] = KS) -> dict[str, float]:
    """recall@K and NDCG@K of ``score`` (user rows -> scores for every candidate)."""
    ranked = top_k(score, task.users.height, task.exclude, max(ks))
    return recall_ndcg(ranked, task.relevant, ks)


def two_tower_scorer(model, task: RetrievalTask, batch_size: int = 4096) -> Callable[[np.ndarray], torch.Tensor]:
    """Dot products of user and item tower outputs (an unsharded `TwoTower` in eval mode)."""
    from recsys.models.inputs import make_batch

    def encode(tower, frame: pl.DataFrame, spec) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([tower(make_batch(frame.slice(i, batch_size), spec))
                              for i in range(0, frame.height, batch_size)])

    item_vectors = encode(model.item_tower, task.items, model.item_spec)
    user_vectors = encode(model.user_tower, task.users, model.user_spec)
    return lambda rows: user_vectors[torch.from_numpy(rows)] @ item_vectors.T


def popularity_scorer(dataset: Dataset, task: RetrievalTask) -> Callable[[np.ndarray], torch.Tensor]:
    """Items by how often they were viewed before the test period, the same for everyone."""
    frames = [pl.read_parquet(dataset.shards("retrieval", s), columns=[META_ITEM]) for s in ("train", "val")]
    counts = pl.concat(frames)[META_ITEM].value_counts()
    per_item = task.items.select(META_ITEM).join(counts, on=META_ITEM, how="left")["count"].fill_null(0)
    scores = torch.from_numpy(per_item.to_numpy().astype(np.float32))
    return lambda rows: scores.expand(len(rows), -1)


def popularity_catalogue_recall(dataset: Dataset, item_column: str, k: int) -> float:
    """The two-tower's validation metric (`recsys.training.module`: each validation pair's item within its user's
    top ``k`` of the whole catalogue, ties ranked for the positive, an item outside the catalogue a miss) for a
    popularity list: the catalogue ordered by views in the training split, the same for everyone."""
    catalogue = dataset.at_test_start("items")[item_column].to_numpy()
    views = pl.read_parquet(dataset.shards("retrieval", "train"), columns=[item_column])[item_column].value_counts()
    count = dict(zip(views[item_column].to_list(), views["count"].to_list(), strict=True))
    scores = np.sort(np.array([count.get(i, 0) for i in catalogue]))
    positives = pl.read_parquet(dataset.shards("retrieval", "val"), columns=[item_column])[item_column].to_numpy()
    if not len(positives):
        raise ValueError(f"dataset {dataset.id} has no validation pairs to compute recall@{k} on")
    in_catalogue = np.isin(positives, catalogue)
    mine = np.array([count.get(i, 0) for i in positives])
    above = len(scores) - np.searchsorted(scores, mine, side="right")  # catalogue items viewed more often
    return float((in_catalogue & (above < k)).mean())


def oracle_scorer(dataset: Dataset, task: RetrievalTask) -> Callable[[np.ndarray], torch.Tensor] | None:
    """The generator's view model (None without the generator's ground truth)."""
    truth = ground_truth_dir(dataset)
    if truth is None:
        return None
    params = json.loads((truth / "params.json").read_text())
    test_start = datetime.fromisoformat(dataset.manifest.snapshots["test_start"]["as_of"])
    drifted = params["drift_at"] is not None and datetime.fromisoformat(params["drift_at"]) <= test_start
    users = pl.read_parquet(truth / "users.parquet")
    taste = users.select(pl.col("user_id").alias(META_USER),
                         pl.col("latent_after_drift" if drifted else "latent").alias("taste"))
    user_truth = task.users.select(META_USER).join(taste, on=META_USER, how="left", maintain_order="left")
    items = pl.read_parquet(truth / "items.parquet").rename({"item_id": META_ITEM})
    item_truth = task.items.select(META_ITEM).join(items, on=META_ITEM, how="left", maintain_order="left")
    if user_truth["taste"].null_count() or item_truth["latent"].null_count():
        return None  # users or items the generator does not know: not its data
    u = torch.from_numpy(np.stack(user_truth["taste"].to_numpy()).astype(np.float32))
    v = torch.from_numpy(np.stack(item_truth["latent"].to_numpy()).astype(np.float32))
    log_pop = torch.from_numpy(item_truth["log_popularity"].to_numpy().astype(np.float32))
    scale = 2.0 * params["config"]["affinity_scale"]
    return lambda rows: log_pop[None, :] + scale * (u[torch.from_numpy(rows)] @ v.T)


def model_metrics(model, task: RetrievalTask) -> dict[str, float]:
    """A two-tower model's ``test/recall@K``, ``test/ndcg@K`` and ``test/retrieval_users`` on ``task``."""
    metrics = {f"test/{k}": v for k, v in evaluate(task, two_tower_scorer(model, task)).items()}
    metrics["test/retrieval_users"] = float(task.users.height)
    return metrics


def retrieval_report(model, dataset: Dataset, max_users: int | None = None) -> tuple[dict, dict]:
    """The model's test metrics (``test/recall@K`` …) and the baselines' (``popularity_recall@K`` …), on the same
    users (``retrieval_users`` in both)."""
    task = retrieval_task(dataset, max_users)
    metrics = model_metrics(model, task)
    baselines = {f"popularity_{k}": v for k, v in evaluate(task, popularity_scorer(dataset, task)).items()}
    baselines["retrieval_users"] = float(task.users.height)
    oracle = oracle_scorer(dataset, task)
    if oracle is not None:
        baselines |= {f"oracle_{k}": v for k, v in evaluate(task, oracle).items()}
    return metrics, baselines

