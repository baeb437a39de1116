"""The rollout state the model registry's aliases call for, on a given Triton model repository.

The registry names versions by its own numbers (``production``, ``candidate``); Triton serves version folders
of its repository. `find_or_add_triton_version` maps one to the other, adding a registered version's export to
the repository (and recording where in the version's tags) when it is not there yet; `state_from_registry`
builds the whole state from the aliases. Applying it to a live Triton is `recsys.deploy.triton_control.apply`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from recsys.deploy.rollout import RolloutState
from recsys.errors import RecsysError


def find_or_add_triton_version(version, info, model: str = "dlrm", registry: str | None = None) -> str:
    """The Triton version folder holding a registered version in ``info``'s repository: the one recorded at
    export when it is there; else the version's export is added to the repository now and the new folder is
    recorded in the version's registry tags (``triton_repository.<model>``, ``triton_version.<model>``).

    Args:
        version: a registered version (`recsys.registry` ``ModelVersion``).
        info: the Triton server (`recsys.deploy.server.ServerInfo`) whose repository serves it.
        model: the Triton model the export holds.
        registry: the MLflow store URI (default: the project's).

    Returns:
        The Triton version number, as a string.
    """
    from recsys.deploy.repository import add_version
    from recsys.registry.lineage import TRITON_REPOSITORY, TRITON_VERSION
    from recsys.registry.store import client

    repo = Path(info.repository).resolve()
    number = version.tags.get(TRITON_VERSION + model)
    recorded = version.tags.get(TRITON_REPOSITORY + model)
    if number and recorded and Path(recorded).resolve() == repo and (repo / model / number).is_dir():
        return number
    exported = version.tags.get(f"artifact.{model}")
    if not exported or not Path(exported).is_dir():
        raise RecsysError(f"{version.task} version {version.version} has no export of {model!r} to add to {repo} "
                          f"(artifact.{model} = {exported!r})")
    number = add_version(repo, exported).name
    mlflow = client(registry)
    mlflow.set_model_version_tag(version.task, str(version.version), TRITON_REPOSITORY + model, str(repo))
    mlflow.set_model_version_tag(version.task, str(version.version), TRITON_VERSION + model, number)
    return number


def state_from_registry(info, share: float, task: str = "dlrm", model: str = "dlrm",
                        registry: str | None = None, base: RolloutState | None = None) -> RolloutState:
    """The rollout state the registry's aliases call for: ``production`` for everyone but ``share`` of users,
    who get ``candidate`` (if it is another version). An aliased version missing from ``info``'s repository is
    added to it (`find_or_add_triton_version`); the rest of the state (thresholds, revision) comes from ``base``.
    """
    from recsys.registry import list_versions

    aliased = {alias: v for v in list_versions(task, registry) for alias in v.aliases}
    production = aliased.get("production")
    if production is None:
        raise RecsysError(f"{task} has no production version to serve; promote one first "
                          f"(recsys models promote V --to production --task {task})")
    candidate = aliased.get("candidate")
    if candidate is not None and candidate.version == production.version:
        candidate = None
    base = base or RolloutState(model=model)
    return replace(base, model=model, production=find_or_add_triton_version(production, info, model, registry),
                   candidate=find_or_add_triton_version(candidate, info, model, registry) if candidate else None,
                   candidate_share=share if candidate else 0.0,
                   registry={"production": str(production.version),
                             **({"candidate": str(candidate.version)} if candidate else {})},
                   datasets={variant: v.tags["dataset_path"] for variant, v in
                             (("production", production), ("candidate", candidate))
                             if v is not None and v.tags.get("dataset_path")})
