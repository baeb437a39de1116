"""The floor a model must clear: its metric against the baselines recorded beside it at training (popularity,
logistic regression on the same inputs, the oracle), on the same rows.

Registration applies it on validation (`VALIDATION_METRIC`): a model that does not beat popularity and logistic
regression there is not registered as a candidate. The promotion gate can apply it to a test metric too
(`recsys models promote --floor`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from recsys.errors import RecsysError
from recsys.registry.lineage import parsed
from recsys.training.early_stopping import MONITOR

BASELINE_NAMES = {"popularity": "popularity", "logistic": "logistic regression", "oracle": "the oracle"}
# what registration compares: each model's validation metric (the one early stopping watches) and the baselines
# it must beat there; logistic regression is a click model, so the retriever's floor is popularity alone
VALIDATION_METRIC = MONITOR
REGISTRATION_FLOOR = {"dlrm": ("popularity", "logistic"), "two-tower": ("popularity",)}


def baseline_key(baseline: str, metric: str) -> str:
    """Where a baseline's value of ``metric`` is recorded: ``popularity_auc`` for test/auc (the test split's, as
    they always were), ``popularity_val_auc`` for val/auc."""
    split, name = metric.split("/", 1)
    return f"{baseline}_{name}" if split == "test" else f"{baseline}_{split}_{name}"


def floor_check(metrics: Mapping[str, float], baselines: Mapping[str, float], metric: str,
                floor: tuple[str, ...], who: str) -> dict[str, Any]:
    """Whether ``metric`` of ``who`` (a version, a training run) beats each baseline named in ``floor``; a baseline
    not recorded fails the check, as nothing shows the model clears it. Returns a gate check:
    ``{"name": "floor", "passed": …, "detail": "val/auc 0.7648: beats popularity 0.6985, logistic regression …"}``."""
    unknown = sorted(set(floor) - set(BASELINE_NAMES))
    if unknown:
        raise RecsysError(f"unknown baselines {unknown} for the floor; expected some of {sorted(BASELINE_NAMES)}")
    mine = metrics.get(metric)
    if mine is None:
        return {"name": "floor", "passed": False, "detail": f"{metric} is not recorded for {who}"}
    below, beaten = [], []
    for baseline in floor:
        theirs = baselines.get(baseline_key(baseline, metric))
        if theirs is None:
            below.append(f"{BASELINE_NAMES[baseline]}'s {metric} is not recorded")
        elif mine > theirs:
            beaten.append(f"{BASELINE_NAMES[baseline]} {theirs:.4f}")
        else:
            below.append(f"does not beat {BASELINE_NAMES[baseline]}'s {theirs:.4f}")
    detail = f"{metric} {mine:.4f}: " + "; ".join(below + ([f"beats {', '.join(beaten)}"] if beaten else []))
    return {"name": "floor", "passed": not below, "detail": detail}


class BelowFloor(RecsysError):
    """A model not registered: on validation it does not beat the baselines recorded beside it."""


def registration_check(tags: Mapping[str, str], allow_below_floor: str | None = None) -> dict[str, Any]:
    """The floor check of an export about to be registered (its lineage ``tags``): its task's validation metric
    against `REGISTRATION_FLOOR`. Raises `BelowFloor` when it fails, unless ``allow_below_floor`` gives the reason to
    register it anyway (recorded with the check)."""
    task, run = tags["task"], tags.get("training_run", "?")
    floor = REGISTRATION_FLOOR[task]
    check = floor_check(parsed(tags, "metrics"), parsed(tags, "baselines"), VALIDATION_METRIC[task], floor,
                        f"training run {run}")
    if not check["passed"]:
        if not allow_below_floor:
            names = " and ".join(BASELINE_NAMES[b] for b in floor)
            raise BelowFloor(f"{task} from training run {run} is not registered as a candidate: {check['detail']}. "
                             f"A model must beat {names} on validation to be registered (--allow-below-floor "
                             f"REASON registers it anyway, on the record)")
        check["allowed_because"] = allow_below_floor
    return check
