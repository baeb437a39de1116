"""The model registry on MLflow's Model Registry: versions with lineage, aliases with history, a promotion gate.

One registered model per task (``dlrm``, ``two-tower``); `register` adds a version per ``recsys export`` whose
model beats popularity (and logistic regression, for the ranker) on validation (`recsys.registry.floor`);
`promote` moves the ``candidate`` or ``production`` alias through the gate; every move is kept in the store
(`history`, `production_at`). Nothing here imports MLflow until a store is opened.
"""

from recsys.registry.aliases import ALIASES, AliasEvent, history, production_at
from recsys.registry.evaluate import evaluate_checkpoint
from recsys.registry.floor import BelowFloor
from recsys.registry.gate import GateRefused, promote, rollback, withdraw_candidate
from recsys.registry.store import PRIMARY_METRIC, TASKS, registry_uri
from recsys.registry.versions import ModelVersion, get_version, list_versions, register

__all__ = ["ALIASES", "PRIMARY_METRIC", "TASKS", "AliasEvent", "BelowFloor", "GateRefused", "ModelVersion",
           "evaluate_checkpoint", "get_version", "history", "list_versions", "production_at", "promote", "register",
           "registry_uri", "rollback", "withdraw_candidate"]
