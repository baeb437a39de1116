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
                schema_hash: str | None = None, parity: float = 1e-7) -> Path:
    """A training run folder and its export as `recsys train` and `recsys export` write them (no weights).

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
        baselines = {"popularity_auc": 0.69}
        models, diffs, index = ["dlrm"], {"dlrm": parity}, {}
    else:
        metrics = {"train/loss": 7.7, "test/recall@10": metric / 2, "test/ndcg@10": 0.18, "test/recall@100": metric,
                   "test/ndcg@100": 0.26, "test/retrieval_users": 100.0}
        baselines = {"popularity_recall@100": 0.5}
        models, diffs, index = ["query_tower"], {"query_tower": parity, "item_embeddings": 0.0}, {"kind": "flat"}
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
