"""A fresh MLflow registry per test (a copy of one migrated empty SQLite store) and synthetic export folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from recsys.registry.store import client


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    client(f"sqlite:///{path}").search_registered_models()  # creates the tables (a few seconds, once)
    return path


@pytest.fixture
def registry(empty_store, tmp_path, monkeypatch) -> str:
    """The URI of an empty registry of this test's own, also set as MLFLOW_TRACKING_URI."""
    path = tmp_path / "registry" / "mlflow.db"
    path.parent.mkdir()
    shutil.copy(empty_store, path)
    uri = f"sqlite:///{path}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def make_export(root: Path, name: str, task: str = "dlrm", metric: float = 0.75, dataset_id: str = "ds-a",
                schema_hash: str | None = None, parity: float = 1e-7, extra_metrics: dict | None = None,
                extra_baselines: dict | None = None) -> Path:
    """A training run folder and its export as `recsys train` and `recsys export` write them (no weights);
    ``extra_metrics`` and ``extra_baselines`` are added to (or replace) the made-up ones.

    Returns the export folder.
    """
    from recsys.schema import load_schema

    schema_hash = schema_hash or load_schema().hash
    run = root / name
    checkpoint = run / "checkpoint_000" / "checkpoint.ckpt"
    checkpoint.mkdir(parents=True)
    config = {"dataset": f"/data/{dataset_id}", "epochs": 2, "dlrm": {"embedding_dim": 16}, "seed": 0}
    (checkpoint / "recsys.json").write_text(json.dumps({
        "task": task, "config": config, "schema_hash": schema_hash, "dataset_id": dataset_id,
        "dataset_path": f"/data/{dataset_id}", "code_version": "abc123", "run": name}))
    if task == "dlrm":
        metrics = {"train/loss": 0.2, "val/auc": metric - 0.01, "test/auc": metric, "test/logloss": 0.23}
        baselines = {"popularity_auc": 0.69, "popularity_val_auc": 0.55, "logistic_val_auc": 0.60}  # the floor
        models, diffs, index = ["dlrm"], {"dlrm": parity}, {}
    else:
        metrics = {"train/loss": 7.7, "test/recall@10": metric / 2, "test/ndcg@10": 0.18, "test/recall@100": metric,
                   "test/ndcg@100": 0.26, "test/retrieval_users": 100.0, "val/recall@100": metric + 0.1}
        baselines = {"popularity_recall@100": 0.5, "popularity_val_recall@100": 0.3}  # the floor
        models, diffs, index = ["query_tower"], {"query_tower": parity, "item_embeddings": 0.0}, {"kind": "flat"}
    metrics |= extra_metrics or {}
    baselines = {k: v for k, v in (baselines | (extra_baselines or {})).items() if v is not None}  # None: left out
    wandb_files = run / "wandb" / "offline-run-20261127_150000-abcdef123456" / "files"
    (run / "metrics.json").write_text(json.dumps({"metrics": metrics, "baselines": baselines, "dataset_id": dataset_id,
                                                  "checkpoint": str(checkpoint), "wandb_run": str(wandb_files)}))
    export = run / "export"
    for model in models:
        (export / model).mkdir(parents=True)
    (export / "export.json").write_text(json.dumps({
        "checkpoint": str(checkpoint),
        "lineage": {"schema_hash": schema_hash, "dataset_id": dataset_id, "training_run": name, "task": task,
                    "code_version": "abc123", "metrics": json.dumps(metrics), "baselines": json.dumps(baselines),
                    "exported_at": "2026-11-27T16:00:00Z"},
        "models": {m: str(export / m) for m in models}, "parity_max_abs_diff": diffs, "tolerance": 1e-5,
        "index": index}))
    return export


# ---- a second dataset of the same shop whose encoders differ: the catalogue and the user base grew ---------
GROWN_USERS, GROWN_ITEMS = 600, 400


def _rarest(values) -> str:
    """The least frequent value (ties: the smallest), which the added rows then make the most frequent."""
    counts = values.value_counts(name="n").sort(["n", values.name])
    return counts[values.name][0]


def grow_shop(raw: Path, out: Path) -> Path:
    """A copy of the generated export ``raw`` with the same events but more users and items: 600 users of its
    rarest country and device, 400 items of its rarest category and brand priced above every item it had.

    A dataset built from it has the same test events and history as one built from ``raw``, but every
    frequency-ordered vocabulary (country, device, category, brand) is reordered, the price buckets move and the
    item catalogue (the item-id vocabulary) is longer. The new users and items have no events. Returns ``out``.
    """
    import polars as pl

    shutil.copytree(raw, out)
    users, items = pl.read_parquet(raw / "users.parquet"), pl.read_parquet(raw / "items.parquet")
    new_users = pl.DataFrame({
        "user_id": range(users["user_id"].max() + 1, users["user_id"].max() + 1 + GROWN_USERS),
        "signup_date": [users["signup_date"].min()] * GROWN_USERS,
        "country": [_rarest(users["country"])] * GROWN_USERS,
        "device": [_rarest(users["device"])] * GROWN_USERS}, schema=users.schema)
    top = float(items["price"].max())
    new_items = pl.DataFrame({
        "item_id": range(items["item_id"].max() + 1, items["item_id"].max() + 1 + GROWN_ITEMS),
        "category": [_rarest(items["category"])] * GROWN_ITEMS,
        "brand": [_rarest(items["brand"])] * GROWN_ITEMS,
        "price": [round(2 * top + k, 2) for k in range(GROWN_ITEMS)],
        "available": [True] * GROWN_ITEMS}, schema=items.schema)
    pl.concat([users, new_users]).write_parquet(out / "users.parquet")
    pl.concat([items, new_items]).write_parquet(out / "items.parquet")
    return out


def grown_dataset_of(raw: Path, work: Path, cfg, schema):
    """`grow_shop` of ``raw``, validated and built with the data config ``cfg`` (a `DataConfig`)."""
    from recsys.data.dataset import build_dataset
    from recsys.data.validate import validate

    validate(grow_shop(raw, work / "raw" / "shop"), work / "validated" / "shop", cfg.validation, cfg.ingest)
    dataset, _ = build_dataset(work / "validated" / "shop", work / "datasets", schema, cfg.build, progress=False)
    return dataset


@pytest.fixture(scope="session")
def grown_dataset(tiny_raw, tiny_cfg, schema, tmp_path_factory):
    """The tiny shop grown (`grow_shop`), built: the same test events as ``tiny_dataset``, other encoders."""
    return grown_dataset_of(tiny_raw, tmp_path_factory.mktemp("grown"), tiny_cfg, schema)
