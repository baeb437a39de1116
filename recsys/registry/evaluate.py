"""Re-evaluating a checkpoint on a dataset's test split, so two models are compared on the same test set."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def evaluate_checkpoint(checkpoint: str | Path, dataset_path: str | Path, batch_size: int = 8192) -> dict[str, float]:
    """The checkpoint's offline test metrics on ``dataset_path``'s test split, keyed like a run's ``metrics.json``.

    DLRM: ``test/auc`` and ``test/logloss`` over every row of the ranking test shards. Two-tower:
    ``test/recall@K`` and ``test/ndcg@K`` against every item (`recsys.evaluation.retrieval.retrieval_report`).
    The model is rebuilt from the checkpoint alone (`load_model`), which refuses another feature schema.
    """
    import polars as pl
    import torch

    from recsys.data.dataset import Dataset
    from recsys.evaluation.metrics import auc, log_loss
    from recsys.evaluation.retrieval import retrieval_report
    from recsys.schema import load_schema
    from recsys.training.checkpoint import load_model

    model, meta = load_model(checkpoint)
    schema = load_schema()
    dataset = Dataset.open(dataset_path, schema)
    if meta["task"] != "dlrm":
        metrics, _ = retrieval_report(model, dataset)
        return metrics
    from recsys.models.inputs import make_batch

    label = schema.label("dlrm").name
    probs, labels = [], []
    with torch.no_grad():
        for shard in dataset.shards("ranking", "test"):
            frame = pl.read_parquet(shard)
            for start in range(0, frame.height, batch_size):
                rows = frame.slice(start, batch_size)
                probs.append(torch.sigmoid(model(make_batch(rows, model.spec))).numpy().reshape(-1))
                labels.append(rows[label].to_numpy())
    y, p = np.concatenate(labels), np.concatenate(probs)
    return {"test/auc": auc(y, p), "test/logloss": log_loss(y, p), "test/rows": float(len(y))}
