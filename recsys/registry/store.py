"""Where the model registry lives: an MLflow tracking/registry store, local SQLite unless told otherwise.

``--registry URI`` or ``MLFLOW_TRACKING_URI`` picks the store (a shared MLflow database such as
``postgresql://…`` works the same); without either it is ``sqlite:///<project>/runs/registry/mlflow.db``.
MLflow is imported only when a store is opened, so the CLI's ``--help`` stays fast.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from recsys.errors import RecsysError
from recsys.schema import PROJECT_ROOT

DEFAULT_DB = PROJECT_ROOT / "runs" / "registry" / "mlflow.db"
TASKS = ("dlrm", "two-tower")  # registered model names
# the offline metric the promotion gate compares, per task (higher is better for both)
PRIMARY_METRIC = {"dlrm": "test/auc", "two-tower": "test/recall@100"}


def registry_uri(uri: str | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else the project's SQLite file (its folder is created)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    DEFAULT_DB.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{DEFAULT_DB}"


def check_task(task: str) -> str:
    if task not in TASKS:
        raise RecsysError(f"unknown task {task!r}; registered models are {', '.join(TASKS)}")
    return task


def client(uri: str | None = None):
    """An ``MlflowClient`` on the registry store (no telemetry; the store's schema migrations stay quiet)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow import MlflowClient

    uri = registry_uri(uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def missing(exc: Exception) -> bool:
    """Whether an MLflow error says the model, version or alias does not exist."""
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST"
