"""The promotion gate: what a version must pass to become ``candidate`` or ``production``, and rollback.

To ``candidate``: export parity passed and the schema hash equals the serving schema's; with a ``floor``, its
metric beats the named baselines recorded beside it (popularity, logistic regression). To ``production``:
the same, and its offline metric (`PRIMARY_METRIC`, or the ``metric`` asked for: GAUC, NDCG within requests)
beats the current production version's by more than ``margin`` on the same test set: the recorded metrics
when both were evaluated on the same dataset, else both checkpoints re-evaluated on the candidate dataset's test
events, each encoded with the encoders of the dataset the model was trained on (`recsys.registry.evaluate`).
``force_reason`` overrides failed checks, on the record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from recsys.errors import RecsysError
from recsys.registry.aliases import AliasEvent, check_alias, current, history, production_lineage, record_move
from recsys.registry.floor import floor_check
from recsys.registry.store import PRIMARY_METRIC, check_task
from recsys.registry.versions import ModelVersion, get_version


class GateRefused(RecsysError):
    """A promotion or rollback refused by the gate; the message names every failed check with its numbers."""

    def __init__(self, message: str, checks: list[dict[str, Any]]):
        super().__init__(message)
        self.checks = checks


# how many test rows (ranking) or users (retrieval) a re-evaluation scored: the same for both, or not the same test
ROWS_METRIC = {"dlrm": "test/rows", "two-tower": "test/retrieval_users"}


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "detail": detail}


def _serving_schema(serving_schema_hash: str | None) -> str:
    if serving_schema_hash:
        return serving_schema_hash
    from recsys.schema import load_schema

    return load_schema().hash


def basic_checks(version: ModelVersion, serving_schema_hash: str) -> list[dict[str, Any]]:
    """Parity and schema: what every alias needs."""
    tags = version.tags
    passed = version.parity_passed
    detail = (f"parity max abs diffs {tags.get('parity', '{}')} within tolerance {tags.get('parity_tolerance')}"
              if passed else f"parity failed: max abs diffs {tags.get('parity', '{}')} exceed tolerance "
              f"{tags.get('parity_tolerance')}")
    schema = tags.get("schema_hash")
    return [_check("parity", passed, detail),
            _check("schema", schema == serving_schema_hash,
                   f"schema hash {schema} {'==' if schema == serving_schema_hash else '!='} serving schema "
                   f"{serving_schema_hash}")]


def gate_metric(task: str, metric: str | None) -> str:
    """The test metric a promotion compares: ``metric`` (e.g. ``test/gauc``, ``test/ndcg@10``), else the task's
    primary one."""
    if metric is None:
        return PRIMARY_METRIC[task]
    if not metric.startswith("test/"):
        raise RecsysError(f"the gate compares test metrics (test/<name>, e.g. test/gauc), got {metric!r}")
    return metric


def compare_with_production(version: ModelVersion, production: ModelVersion | None, margin: float,
                            evaluate: Callable[[str, str], dict[str, float]] | None = None,
                            metric: str | None = None) -> dict[str, Any]:
    """The metric comparison for a promotion to production (``passed`` says whether it beats production)."""
    key = gate_metric(version.task, metric)
    dataset = version.tags.get("dataset_id")
    if production is None:
        return {"metric": key, "candidate": version.metrics.get(key), "production_version": None, "margin": margin,
                "dataset_id": dataset, "source": "no production version", "passed": True,
                "detail": f"no production version yet: the first promotion passes the {key} check"}
    out = {"metric": key, "production_version": production.version, "margin": margin, "dataset_id": dataset}
    if production.tags.get("dataset_id") == dataset:
        mine, theirs, source = version.metrics.get(key), production.metrics.get(key), "recorded"
    else:
        if evaluate is None:
            from recsys.registry.evaluate import evaluate_checkpoint as evaluate
        path = version.tags.get("dataset_path", "")
        try:
            candidate_metrics = evaluate(version.tags["checkpoint"], path)
            production_metrics = evaluate(production.tags["checkpoint"], path)
        except Exception as exc:  # a missing checkpoint or dataset: the check fails, with why
            return out | {"source": "re-evaluated", "candidate": None, "production": None, "passed": False,
                          "detail": f"could not re-evaluate v{version.version} and production v{production.version} "
                                    f"on dataset {dataset} ({path}): {exc}"}
        mine, theirs = candidate_metrics.get(key), production_metrics.get(key)
        source = (f"re-evaluated: both on dataset {dataset}'s test events, each with its own dataset's encoders "
                  f"(production v{production.version} was trained on {production.tags.get('dataset_id')})")
        rows = ROWS_METRIC[version.task]
        counted = {"candidate": candidate_metrics.get(rows), "production": production_metrics.get(rows)}
        if None not in counted.values():
            out["rows"] = counted
            if counted["candidate"] != counted["production"]:
                return out | {"candidate": mine, "production": theirs, "source": source, "passed": False,
                              "detail": f"v{version.version} was scored on {counted['candidate']:g} {rows} and "
                                        f"production v{production.version} on {counted['production']:g}: not the "
                                        f"same test set of dataset {dataset}"}
    out |= {"candidate": mine, "production": theirs, "source": source}
    if mine is None or theirs is None:
        which = f"v{version.version}" if mine is None else f"production v{production.version}"
        return out | {"passed": False, "detail": f"{key} is not recorded for {which}"}
    passed = mine > theirs + margin
    verb = "beats" if passed else "does not beat"
    return out | {"passed": passed, "detail": f"{key} {mine:.4f} {verb} production v{production.version}'s "
                                              f"{theirs:.4f} + margin {margin:g} on dataset {dataset} ({source})"}


def promote(task: str, version: int, to: str, margin: float = 0.0, force_reason: str | None = None,
            serving_schema_hash: str | None = None, reason: str = "", who: str | None = None,
            registry: str | None = None,
            evaluate: Callable[[str, str], dict[str, float]] | None = None,
            metric: str | None = None, floor: tuple[str, ...] = ()) -> AliasEvent:
    """Move alias ``to`` (candidate | production) to ``version`` if the gate passes (or ``force_reason`` is given).

    Args:
        margin: how much the production metric must be beaten by (strictly).
        metric: the test metric compared (default: the task's `PRIMARY_METRIC`), e.g. ``test/gauc`` or
            ``test/ndcg@10`` (the clicks within each request) for the ranker.
        floor: baselines (popularity, logistic, oracle) the version's ``metric`` must beat, for either alias.
        force_reason: override failed checks; recorded in the event. Without it a failure raises `GateRefused`.
        serving_schema_hash: the schema serving runs (default: the project's `recsys.schema.load_schema()`).
        evaluate: ``(checkpoint, dataset_path) -> metrics`` for re-evaluation (default: `evaluate_checkpoint`).
    Returns:
        The recorded alias event.
    """
    check_task(task)
    check_alias(to)
    candidate = get_version(task, version, registry)
    if current(task, to, registry) == candidate.version:
        raise RecsysError(f"{task} v{candidate.version} is already {to}")
    key = gate_metric(task, metric)
    checks = basic_checks(candidate, _serving_schema(serving_schema_hash))
    if floor:
        checks.append(floor_check(candidate.metrics, candidate.baselines, key, tuple(floor), f"v{candidate.version}"))
    comparison = None
    if to == "production":
        now = current(task, "production", registry)
        production = get_version(task, now, registry) if now is not None else None
        comparison = compare_with_production(candidate, production, margin, evaluate, key)
        checks.append(_check("metric", comparison["passed"], comparison["detail"]))
    failed = [c for c in checks if not c["passed"]]
    if failed and not force_reason:
        raise GateRefused(f"{task} v{candidate.version} refused for {to}: "
                          + "; ".join(c["detail"] for c in failed) + " (--force REASON overrides)", checks)
    return record_move(task, to, candidate.version, "promote", reason=reason, who=who, checks=checks,
                       comparison=comparison, forced=force_reason if failed else None, registry=registry)


def rollback(task: str, reason: str = "", who: str | None = None, serving_schema_hash: str | None = None,
             registry: str | None = None) -> AliasEvent:
    """Point ``production`` back at the version that was production before the current one.

    Refused when there is no earlier production version, or when that version's schema is not the serving one.
    """
    check_task(task)
    stack = production_lineage(history(task, registry))
    now = current(task, "production", registry)
    if now is None:
        raise GateRefused(f"{task} has no production version to roll back", [])
    if len(stack) < 2 or stack[-1] != now:
        raise GateRefused(f"{task} production v{now} has no earlier production version in the history to roll "
                          "back to", [])
    target = get_version(task, stack[-2], registry)
    checks = basic_checks(target, _serving_schema(serving_schema_hash))[1:]  # it served before: schema only
    if not checks[0]["passed"]:
        raise GateRefused(f"{task} rollback to v{target.version} refused: {checks[0]['detail']}", checks)
    return record_move(task, "production", target.version, "rollback", reason=reason, who=who, checks=checks,
                       registry=registry)


def withdraw_candidate(task: str, reason: str = "", who: str | None = None, registry: str | None = None) -> AliasEvent:
    """Take the ``candidate`` alias off its version (a canary that lost or was rolled back), recorded as an event."""
    check_task(task)
    if current(task, "candidate", registry) is None:
        raise RecsysError(f"{task} has no candidate version to withdraw")
    return record_move(task, "candidate", None, "withdraw", reason=reason, who=who, registry=registry)
