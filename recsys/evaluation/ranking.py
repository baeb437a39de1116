"""Ranking evaluation: an unsharded DLRM scored on every row of a split, with nothing dropped.

Training's per-epoch evaluation runs on the sharded model, where every worker must take the same number of
steps, so it sees the rows its workers can split into whole batches. The metrics a run records and the
registry compares come from here instead: the model rebuilt from its checkpoint, every row of every shard,
so the model and the baselines (`recsys.evaluation.baselines`) are scored on the same rows.
"""

from __future__ import annotations

from contextlib import suppress

import numpy as np
import polars as pl

from recsys.data.features import META_REQUEST, META_USER
from recsys.evaluation.lists import NoUserOfBothClasses, gauc, ndcg_in_requests
from recsys.evaluation.metrics import auc, log_loss


def ranking_logits(model, rows: pl.DataFrame, batch_size: int = 8192) -> np.ndarray:
    """Click logits of an unsharded `recsys.models.dlrm.Ranker` (eval mode) for every row of ``rows``."""
    import torch

    from recsys.models.inputs import make_batch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    with torch.no_grad():
        for start in range(0, rows.height, batch_size):
            out.append(model(make_batch(rows.slice(start, batch_size), model.spec)).numpy().reshape(-1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def ranking_scores(model, rows: pl.DataFrame, batch_size: int = 8192) -> np.ndarray:
    """Click probabilities of an unsharded `recsys.models.dlrm.Ranker` (eval mode) for every row of ``rows``."""
    import torch

    return torch.sigmoid(torch.from_numpy(ranking_logits(model, rows, batch_size))).numpy()


def ranking_metrics(labels: np.ndarray, probs: np.ndarray, prefix: str = "test",
                    users: np.ndarray | None = None) -> dict[str, float]:
    """``<prefix>/auc`` (when both classes occur), ``<prefix>/logloss`` and ``<prefix>/rows``, the rows scored;
    with each row's ``users``, ``<prefix>/gauc`` too (`recsys.evaluation.lists.gauc`: the AUC within each user's
    impressions, where a model must tell one shopper's items apart, not only popular from unpopular ones)."""
    labels = np.asarray(labels)
    if len(labels) != len(probs):
        raise ValueError(f"{len(labels)} labels but {len(probs)} scores: they must be the same rows")
    if not len(labels):
        raise ValueError(f"no {prefix} rows to evaluate")
    out = {f"{prefix}/logloss": log_loss(labels, probs), f"{prefix}/rows": float(len(labels))}
    if 0 < labels.sum() < len(labels):
        out[f"{prefix}/auc"] = auc(labels, probs)
    if users is not None:  # (a split this small may have no GAUC, as one of a single class has no AUC)
        with suppress(NoUserOfBothClasses):
            out[f"{prefix}/gauc"] = gauc(users, labels, probs)
    return out


def served_order(rows: pl.DataFrame, context: dict[str, object] | None) -> pl.DataFrame:
    """``rows`` with each ``context`` input (e.g. the position) set to what serving gives every candidate."""
    if not context:
        return rows
    return rows.with_columns(pl.lit(value, dtype=rows[name].dtype).alias(name) for name, value in context.items())


def ndcg_metric(rows: pl.DataFrame, labels: np.ndarray, scores: np.ndarray, prefix: str) -> dict[str, float]:
    """``<prefix>/ndcg@10`` of the clicks within each logged request (rows without a request left out), when the
    rows name their requests and one of them has a click."""
    if META_REQUEST not in rows.columns:
        return {}
    known = rows[META_REQUEST].is_not_null().to_numpy()
    with suppress(ValueError):  # (no request with a click)
        return {f"{prefix}/ndcg@10": ndcg_in_requests(rows[META_REQUEST].to_numpy()[known], labels[known],
                                                      scores[known], k=10)}
    return {}


def ranking_report(model, rows: pl.DataFrame, label: str, prefix: str = "test", batch_size: int = 8192,
                   context: dict[str, object] | None = None) -> dict[str, float]:
    """The model's AUC, GAUC (where ``rows`` name their users), log-loss and row count over every row of ``rows``
    (a split's examples, label column ``label``), and NDCG@10 within each logged request (where they name their
    requests), each request's items scored as serving scores candidates: the ``context`` inputs (the position) at
    their serving value, so the order is the model's, not the logged slots'."""
    users = rows[META_USER].to_numpy() if META_USER in rows.columns else None
    labels = rows[label].to_numpy()
    out = ranking_metrics(labels, ranking_scores(model, rows, batch_size), prefix, users)
    if META_REQUEST in rows.columns:
        out |= ndcg_metric(rows, labels, ranking_scores(model, served_order(rows, context), batch_size), prefix)
    return out
