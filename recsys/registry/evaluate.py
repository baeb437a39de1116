"""Re-evaluating a checkpoint on a dataset's test events, so two models are compared on the same test set.

Every dataset fits its own encoders (the item-id vocabulary is its catalogue, categorical vocabularies are
ordered by frequency, price buckets are quantiles of its prices), so index 7 of one dataset's ``item_brand``
is not index 7 of another's. A model is therefore never fed another dataset's shards: a model trained on the
dataset being evaluated reads its test shards; any other model reads the same test events encoded again with
the encoders of the dataset it was trained on, from the validated export the evaluated dataset was built
from (which holds the whole history, so every point-in-time feature is the one the build computed). A value
that model's vocabularies lack maps to index 0 (unknown), as it would in serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recsys.errors import RecsysError


def _own_encoders(checkpoint: str | Path, meta: dict[str, Any], schema):
    """The encoders of the dataset the checkpoint was trained on, refused if that dataset is not the recorded one."""
    from recsys.data.dataset import Dataset

    path, trained_on = meta.get("dataset_path"), meta.get("dataset_id")
    if not path:
        raise RecsysError(f"checkpoint {checkpoint} does not record the folder of dataset {trained_on}, whose "
                          "encoders it needs to read another dataset's events")
    try:
        own = Dataset.open(path, schema)
    except RecsysError as exc:
        raise RecsysError(f"checkpoint {checkpoint} needs the encoders of dataset {trained_on}, which it was "
                          f"trained on: {exc}") from exc
    if own.id != trained_on:
        raise RecsysError(f"checkpoint {checkpoint} was trained on dataset {trained_on}, but {path} holds dataset "
                          f"{own.id}: its encoders are not the checkpoint's")
    encoders = own.encoders(schema)
    sizes = {table: encoders.fitted[table].cardinality for table in meta["cardinalities"]}
    if sizes != meta["cardinalities"]:
        raise RecsysError(f"checkpoint {checkpoint}: the encoders of dataset {own.id} give embedding table sizes "
                          f"{sizes}, the checkpoint's are {meta['cardinalities']}")
    return encoders


def evaluate_checkpoint(checkpoint: str | Path, dataset_path: str | Path, batch_size: int = 8192) -> dict[str, float]:
    """The checkpoint's offline test metrics on the test events of the dataset at ``dataset_path``, keyed like a
    run's ``metrics.json``, each input encoded with the encoders of the dataset the checkpoint was trained on.

    DLRM: ``test/auc``, ``test/logloss`` and ``test/rows`` over every impression of the test period (the same
    rows, by event id, whichever encoders read them). Two-tower: ``test/recall@K``, ``test/ndcg@K`` and
    ``test/retrieval_users`` for the dataset's test users against every item of its catalogue at the test start
    (`recsys.evaluation.retrieval`), users and items encoded by the model's own encoders.
    The model is rebuilt from the checkpoint alone (`load_model`), which refuses another feature schema.
    """
    import polars as pl

    from recsys.data.dataset import Dataset
    from recsys.data.features import META_EVENT_ID
    from recsys.data.reencoding import builder_with, encoded_at_test_start, encoded_split
    from recsys.evaluation.ranking import ranking_report
    from recsys.evaluation.retrieval import model_metrics, retrieval_task
    from recsys.online.features import serving_context
    from recsys.schema import load_schema
    from recsys.training.checkpoint import load_model

    model, meta = load_model(checkpoint)
    schema = load_schema()
    dataset = Dataset.open(dataset_path, schema)
    foreign = meta.get("dataset_id") != dataset.id
    builder = builder_with(dataset, schema, _own_encoders(checkpoint, meta, schema)) if foreign else None
    if meta["task"] != "dlrm":
        task = retrieval_task(dataset)
        if builder is not None:
            tables = encoded_at_test_start(builder, dataset)
            task = task.encoded_with(tables["users"], tables["items"])
        return model_metrics(model, task)
    label = schema.label("dlrm").name
    if builder is None:
        rows = dataset.read("ranking", "test")
    else:
        rows = encoded_split(builder, dataset, "ranking", "test")
        shards = pl.read_parquet(dataset.shards("ranking", "test"), columns=[META_EVENT_ID])[META_EVENT_ID]
        if not np.array_equal(np.sort(rows[META_EVENT_ID].to_numpy()), np.sort(shards.to_numpy())):
            raise RecsysError(f"dataset {dataset.id}'s test events encoded again give {rows.height} rows, its test "
                              f"shards hold {shards.len()}: they should be the same impressions")
    encoders = builder.encoders if builder is not None else dataset.encoders(schema)
    return ranking_report(model, rows, label, batch_size=batch_size, context=serving_context(schema, encoders))
