"""Metrics: AUC and log-loss for ranking; recall@K and NDCG@K for retrieval with brute-force top-K.

Retrieval is scored against every item, with each user's already-seen items (e.g. their training
interactions) excluded before taking the top K, the protocol of most recommender papers. Relevance
is binary: an item the user interacted with in the evaluation period.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; tied scores count half)."""
    from scipy.stats import rankdata  # (lazy: the GPU checks run on machines without SciPy)

    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes; got {n_pos} positives and {n_neg} negatives")
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of predicted probabilities."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def top_k(score: Callable[[np.ndarray], torch.Tensor], n_users: int, exclude: Sequence[np.ndarray], k: int,
          chunk: int = 1024) -> np.ndarray:
    """The ``k`` best items of every user, by brute force, skipping each user's ``exclude`` items.

    Args:
        score: user indices (n,) -> scores (n, n_items) for every item.
        exclude: per user, item indices that may not be recommended.
    Returns:
        (n_users, k) item indices, best first.
    """
    out = []
    for start in range(0, n_users, chunk):
        users = np.arange(start, min(start + chunk, n_users))
        scores = score(users).clone()  # (n, n_items)
        rows = np.concatenate([np.full(len(exclude[u]), i) for i, u in enumerate(users)]).astype(np.int64)
        cols = np.concatenate([exclude[u] for u in users]).astype(np.int64)
        scores[torch.from_numpy(rows), torch.from_numpy(cols)] = float("-inf")
        out.append(torch.topk(scores, k, dim=1).indices.numpy())
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def recall_ndcg(ranked: np.ndarray, relevant: Sequence[np.ndarray], ks: Sequence[int]) -> dict[str, float]:
    """Mean recall@K and NDCG@K over users with at least one relevant item.

    Args:
        ranked: (n_users, >= max(ks)) item indices, best first.
        relevant: per user, the item indices that count as hits.
    """
    users = [u for u in range(len(relevant)) if len(relevant[u])]
    if not users:
        raise ValueError("no user has a relevant item to find")
    discounts = 1.0 / np.log2(np.arange(2, max(ks) + 2))
    out: dict[str, float] = {}
    for k in ks:
        recalls, ndcgs = [], []
        for u in users:
            hits = np.isin(ranked[u, :k], relevant[u])
            n_rel = len(np.unique(relevant[u]))
            recalls.append(hits.sum() / n_rel)
            ideal = discounts[: min(n_rel, k)].sum()
            ndcgs.append((hits * discounts[:k]).sum() / ideal)
        out[f"recall@{k}"] = float(np.mean(recalls))
        out[f"ndcg@{k}"] = float(np.mean(ndcgs))
    return out


def catalogue_hits(users: torch.Tensor, items: torch.Tensor, positives: torch.Tensor, k: int) -> torch.Tensor:
    """(B,) whether each positive pair's item ranks in its user's top ``k`` of the whole catalogue.

    Args:
        users: (B, D) user vectors; items: (N, D) every candidate's vector; positives: (B,) the row in ``items`` of
        each user's positive item (-1: not in the catalogue, a miss). Ties rank the positive first.
    """
    scores = users @ items.T  # (B, N)
    found = positives >= 0
    mine = scores.gather(1, positives.clamp(min=0)[:, None])  # (B, 1)
    above = (scores > mine).sum(dim=1)
    return found & (above < k)
