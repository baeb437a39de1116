"""Metrics of what shoppers see, beside the AUC over every logged impression.

AUC over all impressions is carried by what differs *between* users and lists (popularity, position): a model
that ranks every user's candidates the same way scores well on it. These look inside:

- ``gauc``: the AUC within each user's impressions, averaged over users (weighted by their impressions), over the
  users who both clicked and skipped something: how well the model orders one shopper's items.
- ``ndcg_in_requests``: NDCG@K of the clicks within each logged request, the model re-ordering what was shown.
- ``list_coverage``: how varied the served lists are: distinct items over all lists, and the share of lists that
  hold the most common item (a bestseller list puts its top item in every one).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl


def _frame(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> pl.DataFrame:
    groups, labels, scores = np.asarray(groups), np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if not len(groups) == len(labels) == len(scores):
        raise ValueError(f"{len(groups)} groups, {len(labels)} labels and {len(scores)} scores: they must be the "
                         "same rows")
    return pl.DataFrame({"g": groups, "y": labels.astype(np.int64), "s": scores})


class NoUserOfBothClasses(ValueError):
    """No user has both a click and a non-click: there is no per-user AUC to average."""


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Per-user AUC (Mann-Whitney U, tied scores count half), averaged with each user's impression count as its
    weight, over the users with at least one click and one non-click."""
    per_user = (_frame(users, labels, scores)
                .with_columns(rank=pl.col("s").rank("average").over("g"))
                .group_by("g")
                .agg(n=pl.len(), pos=pl.col("y").sum(), rank_sum=(pl.col("rank") * pl.col("y")).sum())
                .with_columns(neg=pl.col("n") - pl.col("pos"))
                .filter((pl.col("pos") > 0) & (pl.col("neg") > 0)))
    if per_user.is_empty():
        raise NoUserOfBothClasses("GAUC needs a user with both a click and a non-click; there is none")
    pos, neg = per_user["pos"].to_numpy(), per_user["neg"].to_numpy()
    user_auc = (per_user["rank_sum"].to_numpy() - pos * (pos + 1) / 2) / (pos * neg)
    return float(np.average(user_auc, weights=per_user["n"].to_numpy()))


def ndcg_in_requests(requests: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over the requests with a click: each request's shown items re-ordered by ``scores``, a click
    the relevance. A tie is never resolved in the model's favour (tied items are placed clicks last)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranked = (_frame(requests, labels, scores)
              .sort(["g", "s", "y"], descending=[False, True, False])
              .with_columns(place=pl.int_range(pl.len()).over("g"),
                            ideal=pl.col("y").sort(descending=True).over("g"))
              .filter(pl.col("place") < k)
              .with_columns(discount=1.0 / (pl.col("place") + 2).cast(pl.Float64).log(2))
              .group_by("g")
              .agg(dcg=(pl.col("y") * pl.col("discount")).sum(), idcg=(pl.col("ideal") * pl.col("discount")).sum())
              .filter(pl.col("idcg") > 0))
    if ranked.is_empty():
        raise ValueError("NDCG needs a request with a click; there is none")
    return float((ranked["dcg"] / ranked["idcg"]).mean())


@dataclass(frozen=True)
class ListCoverage:
    lists: int  # how many lists
    distinct_items: int  # items that appear in at least one of them
    top_item: int | None  # the item found in the most lists
    top_item_share: float  # the share of lists that hold it

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}/distinct_items": float(self.distinct_items),
                f"{prefix}/top_item_share": self.top_item_share}


def list_coverage(lists: Iterable[Sequence[int]]) -> ListCoverage:
    """Catalogue coverage and concentration of served lists (each a sequence of item ids; a repeated item within
    one list counts once)."""
    in_lists: Counter = Counter()
    n = 0
    for items in lists:
        in_lists.update(set(items))
        n += 1
    if not n:
        raise ValueError("no lists to measure")
    top = in_lists.most_common(1)
    return ListCoverage(lists=n, distinct_items=len(in_lists), top_item=top[0][0] if top else None,
                        top_item_share=top[0][1] / n if top else 0.0)
