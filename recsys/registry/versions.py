"""Registered model versions: one per export, named by task, with its lineage as tags."""

from __future__ import annotations

import getpass
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError
from recsys.registry.floor import registration_check
from recsys.registry.lineage import export_lineage, parsed
from recsys.registry.store import PRIMARY_METRIC, check_task, client, missing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a task's model."""

    task: str
    version: int
    created: str  # UTC, ISO 8601
    source: str  # the export folder
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        """Offline metrics recorded at registration: the kept epoch's validation ones and the test ones."""
        return parsed(self.tags, "metrics")

    @property
    def baselines(self) -> dict[str, float]:
        """The baselines' metrics recorded beside the model's at training: test (``popularity_auc`` …) and
        validation (``popularity_val_auc`` …)."""
        return parsed(self.tags, "baselines")

    @property
    def primary_metric(self) -> tuple[str, float | None]:
        """The metric the promotion gate compares, and its recorded value (None if missing)."""
        key = PRIMARY_METRIC[self.task]
        return key, self.metrics.get(key)

    @property
    def parity_passed(self) -> bool:
        return self.tags.get("parity_passed") == "true"


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _from_mlflow(mv: Any) -> ModelVersion:
    return ModelVersion(task=mv.name, version=int(mv.version), created=_utc(mv.creation_timestamp),
                        source=mv.source, aliases=tuple(sorted(mv.aliases or ())), tags=dict(mv.tags or {}))


def register(export_dir: str | Path, triton_versions: Mapping[str, str | Path] | None = None,
             registry: str | None = None, allow_below_floor: str | None = None) -> ModelVersion:
    """Register the export in ``export_dir`` as a new version of its task's model, if it clears the floor.

    Args:
        export_dir: a folder written by ``recsys export``.
        triton_versions: exported model name -> the Triton version folder it was added as (recorded as tags).
        registry: the store's URI (default: ``MLFLOW_TRACKING_URI`` or the project's SQLite file).
        allow_below_floor: register a model that does not beat the baselines on validation, for this reason.
    Returns:
        The new version, with its lineage tags (``registration_floor``: the floor check it passed).
    Raises:
        BelowFloor: the model does not beat popularity (and logistic regression, for the ranker) on validation
            (`recsys.registry.floor`).
    """
    tags = export_lineage(export_dir, triton_versions)
    task = check_task(tags["task"])
    tags["registration_floor"] = json.dumps(registration_check(tags, allow_below_floor))
    tags |= {"registered_by": getpass.getuser(),
             "registered_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}
    mlflow = client(registry)
    try:
        mlflow.get_registered_model(task)
    except Exception as exc:
        if not missing(exc):
            raise
        mlflow.create_registered_model(task, description=f"recsys {task} models (one version per export)")
    mv = mlflow.create_model_version(task, source=tags["export_dir"], tags=tags,
                                     description=f"{tags['training_run']} on {tags['dataset_id']}")
    version = _from_mlflow(mlflow.get_model_version(task, mv.version))
    link_wandb_artifact(version)
    return version


def get_version(task: str, version: int | str, registry: str | None = None) -> ModelVersion:
    """One registered version; a clear error if there is no such version."""
    check_task(task)
    try:
        return _from_mlflow(client(registry).get_model_version(task, str(int(version))))
    except Exception as exc:
        if missing(exc):
            raise RecsysError(f"{task} has no registered version {version}; see `recsys models list --task "
                              f"{task}`") from None
        raise


def list_versions(task: str, registry: str | None = None) -> list[ModelVersion]:
    """Every registered version of ``task``'s model, oldest first (none if the model was never registered)."""
    mlflow = client(registry)
    found = mlflow.search_model_versions(f"name='{check_task(task)}'")
    if not found:
        return []
    # search results carry no aliases (MLflow fills them only on single-version reads): take the model's
    by_version: dict[int, list[str]] = {}
    for alias, version in (mlflow.get_registered_model(task).aliases or {}).items():
        by_version.setdefault(int(version), []).append(alias)
    versions = [replace(_from_mlflow(mv), aliases=tuple(sorted(by_version.get(int(mv.version), ())))) for mv in found]
    return sorted(versions, key=lambda v: v.version)


def link_wandb_artifact(version: ModelVersion) -> bool:
    """Online only: link the training run's model artifact into W&B's model registry (collection = task).

    Best effort: a failure is a warning, never an error; offline (the default) it does nothing.
    Returns whether a link was made.
    """
    from recsys.tracking import PROJECT, wandb_mode

    if wandb_mode() != "online" or not version.tags.get("wandb_run"):
        return False
    try:
        import wandb

        run_id = Path(version.tags["wandb_run"]).parent.name.rsplit("-", 1)[-1]  # …/run-<stamp>-<id>/files
        api = wandb.Api()
        run = api.run(f"{api.default_entity}/{PROJECT}/{run_id}")
        artifact = next(a for a in run.logged_artifacts() if a.type == "model")
        artifact.link(f"wandb-registry-model/{version.task}", aliases=[f"mlflow-v{version.version}"])
        return True
    except Exception as exc:  # the registry in MLflow is what counts; W&B is a mirror
        log.warning("could not link the W&B model artifact of %s (version %d) in W&B's registry: %s",
                    version.tags.get("training_run"), version.version, exc)
        return False
