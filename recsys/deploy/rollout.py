"""What the serving app ranks with, and how traffic moves between model versions on a live Triton.

The *rollout state* is a small JSON file the ingress replicas watch (``ServingConfig.rollout_file``): which
Triton version of the ranking model is ``production``, which (if any) is the ``candidate``, the candidate's
share of users, and the thresholds past which a replica sends the candidate's traffic back to production on
its own. The file is replaced atomically; its ``revision`` only grows, so a replica that rolls back writes only
over the state it acted on. Every change is appended to ``<file>.events.jsonl`` with its reason.

Triton side (explicit model control): `sync_triton` loads exactly the versions a state names, with the model's
own config and a ``specific`` version policy. A move never drops a request: the new versions are loaded beside
the old ones first, the state is written, the replicas switch within their poll interval, and only then
(`apply`, after ``grace_s``) are versions no longer named unloaded.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError


@dataclass(frozen=True)
class Thresholds:
    """When a replica stops sending users to the candidate (over its last ``window`` candidate requests, once
    it has seen ``min_requests``)."""

    max_error_rate: float = 0.05  # share of candidate calls that failed or missed the ranking deadline
    max_p99_ms: float = 250.0  # the candidate's ranking-call p99
    window: int = 200
    min_requests: int = 20


@dataclass(frozen=True)
class RolloutState:
    model: str = "dlrm"  # the Triton ranking model
    production: str = ""  # its Triton version ("" = the newest loaded)
    candidate: str | None = None
    candidate_share: float = 0.0  # of users, by a stable hash of the user id
    registry: dict[str, str] = field(default_factory=dict)  # variant -> registry version (for the record)
    # variant -> the dataset folder its model was trained on: the app encodes that variant's ranking inputs with
    # this dataset's online tables and encoders (a retrained model has its own vocabularies); absent = the app's
    datasets: dict[str, str] = field(default_factory=dict)
    thresholds: Thresholds = field(default_factory=Thresholds)
    revision: int = 0
    updated_at: str = ""
    reason: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.candidate_share <= 1.0:
            raise RecsysError(f"rollout: candidate_share must be within [0, 1], got {self.candidate_share}")
        if self.candidate is not None and self.candidate == self.production:
            raise RecsysError(f"rollout: candidate and production are both version {self.candidate}")

    @property
    def versions(self) -> list[str]:
        """The Triton versions this state ranks with."""
        return [v for v in (self.production, self.candidate) if v]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RolloutState:
        raw = dict(raw)
        raw["thresholds"] = Thresholds(**raw.get("thresholds", {}))
        return cls(**raw)


def read(path: str | Path) -> RolloutState | None:
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return RolloutState.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise RecsysError(f"{path} is not a rollout state: {exc}") from exc


def events_path(path: str | Path) -> Path:
    return Path(f"{path}.events.jsonl")


def write(path: str | Path, state: RolloutState, reason: str, expect_revision: int | None = None,
          event: dict[str, Any] | None = None) -> RolloutState | None:
    """Replace the state (revision + 1) and log the change. With ``expect_revision``, do nothing and return
    None when the file has moved on since (someone else changed it first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    current = read(path)
    if expect_revision is not None and current is not None and current.revision != expect_revision:
        return None
    new = replace(state, revision=(current.revision if current else 0) + 1, reason=reason,
                  updated_at=datetime.now(UTC).isoformat(timespec="milliseconds"))
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    staging.write_text(json.dumps(new.to_dict(), indent=2))
    os.replace(staging, path)
    record = {"at": new.updated_at, "revision": new.revision, "reason": reason, "production": new.production,
              "candidate": new.candidate, "candidate_share": new.candidate_share, **(event or {})}
    with open(events_path(path), "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return new


def history(path: str | Path) -> list[dict[str, Any]]:
    log = events_path(path)
    return [json.loads(line) for line in log.read_text().splitlines() if line] if log.is_file() else []


# ---- Triton -----------------------------------------------------------------------------------------
def _model_config(info, model: str):
    """The model's config as this server reads it (the CPU twin or the GPU config.pbtxt)."""
    from recsys.deploy.repository import CONFIG_FILE, parse_config

    folder = Path(info.repository) / model
    file = folder / "configs" / f"{info.config_name}.pbtxt" if info.config_name else folder / CONFIG_FILE
    return parse_config(file)


def sync_triton(info, model: str, versions: list[str]) -> None:
    """Load exactly ``versions`` of ``model`` (the model's config with a ``specific`` version policy).
    Versions already loaded keep serving while others load."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2 as mc
    from tritonclient.utils import InferenceServerException

    from recsys.deploy.repository import versions as repository_versions
    from recsys.deploy.server import _client

    missing = sorted({int(v) for v in versions} - set(repository_versions(info.repository, model)))
    if missing:
        raise RecsysError(f"model {model!r} has no version(s) {missing} in {info.repository}")
    config = _model_config(info, model)
    config.version_policy.CopyFrom(mc.ModelVersionPolicy(
        specific=mc.ModelVersionPolicy.Specific(versions=sorted(int(v) for v in versions))))
    client = _client(info)
    try:
        client.load_model(model, config=json_format.MessageToJson(config))
    except InferenceServerException as exc:
        raise RecsysError(f"Triton could not load {model!r} versions {versions}: {exc.message()}") from exc
    finally:
        client.close()


def apply(path: str | Path, state: RolloutState, reason: str, info=None, grace_s: float = 3.0,
          event: dict[str, Any] | None = None) -> RolloutState:
    """Move serving to ``state``: load its versions beside the current ones, write the state, give the replicas
    ``grace_s`` to switch and their in-flight calls to finish, then unload what it no longer names."""
    current = read(path)
    if info is not None:
        sync_triton(info, state.model, sorted({*state.versions, *(current.versions if current else [])}))
    new = write(path, state, reason, event=event)
    if info is not None and current is not None and set(current.versions) - set(state.versions):
        time.sleep(grace_s)
        sync_triton(info, state.model, state.versions)
    return new


# ---- from the registry --------------------------------------------------------------------------------
def triton_version(version, info, model: str = "dlrm", registry: str | None = None) -> str:
    """The Triton version folder holding a registered version in ``info``'s repository: the one recorded at
    export when it is there, else the version's export is added to the repository now (and recorded)."""
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
    who get ``candidate`` (if it is another version)."""
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
    return replace(base, model=model, production=triton_version(production, info, model, registry),
                   candidate=triton_version(candidate, info, model, registry) if candidate else None,
                   candidate_share=share if candidate else 0.0,
                   registry={"production": str(production.version),
                             **({"candidate": str(candidate.version)} if candidate else {})},
                   datasets={variant: v.tags["dataset_path"] for variant, v in
                             (("production", production), ("candidate", candidate))
                             if v is not None and v.tags.get("dataset_path")})
