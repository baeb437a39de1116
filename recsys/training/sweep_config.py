"""A sweep's config: which training-config fields a search space may hold, its distributions, and the checks that
refuse a sweep that could not run before anything starts (``load_sweep``)."""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recsys.config import ConfigError, from_dict, load_config
from recsys.schema import PROJECT_ROOT
from recsys.training.config import TrainConfig

RANGES = ("loguniform", "uniform", "randint")  # {kind: [low, high]}; randint excludes high, as in Tune
SETS = ("choice", "grid")  # {kind: [value, ...]}: one sampled per trial, or every one tried
DEFAULT_METRIC = {"dlrm": ("val/auc", "max"), "two-tower": ("val/loss", "min")}
SET_BY_SWEEP = ("dataset", "output", "name", "epochs")  # the same for every trial: not in a search space


@dataclass(frozen=True)
class SweepConfig:
    """A sweep over a training config; every field can be overridden with ``--set key=value``."""

    task: str = "dlrm"  # dlrm | two-tower
    train_config: str = "configs/train/default.yaml"  # base training config: from the current folder, else the repo
    train: dict[str, Any] = field(default_factory=dict)  # fixed changes to it for every trial, e.g. {epochs: 4}
    # dotted TrainConfig field -> {loguniform|uniform|randint: [low, high]} or {choice|grid: [value, ...]}; a section
    # (optim, dlrm, two_tower) -> {choice|grid: [partial mappings]} for fields that must change together
    space: dict[str, Any] = field(default_factory=dict)
    metric: str = ""  # the reported metric to optimise; empty = val/auc (dlrm) or val/loss (two-tower)
    mode: str = ""  # max | min; empty = max for an AUC, else min
    trials: int = 8  # samples drawn from the space (with a grid: samples of every grid combination)
    max_concurrent: int = 1  # trials at once; each takes its workers' CPUs plus one for Tune
    grace_period: int = 1  # epochs every trial trains before ASHA may stop it; below the epochs
    reduction_factor: int = 2  # at each ASHA rung a trial goes on only if among the best 1/reduction_factor
    seed: int = 0  # of the random search
    output: str = "runs/sweeps"  # sweep folders
    name: str = ""  # the sweep's folder and W&B group; empty = sweep-<model>-<dataset id>-<time>


def sweepable_fields(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Dotted names of the training-config fields a search space may hold."""
    hints = typing.get_type_hints(cls)
    names: list[str] = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            names += sweepable_fields(hints[f.name], f"{prefix}{f.name}.")
        elif f"{prefix}{f.name}" not in SET_BY_SWEEP:
            names.append(f"{prefix}{f.name}")
    return names


def sections() -> list[str]:
    """The training config's sections, which a search space may give a choice of partial mappings."""
    hints = typing.get_type_hints(TrainConfig)
    return [f.name for f in dataclasses.fields(TrainConfig) if dataclasses.is_dataclass(hints[f.name])]


def flatten(tree: dict[str, Any], leaf=lambda value: not isinstance(value, dict), prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if leaf(value):
            flat[f"{prefix}{key}"] = value
        else:
            flat |= flatten(value, leaf, f"{prefix}{key}.")
    return flat


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a dotted key; a mapping is merged into the section there."""
    if isinstance(value, dict):
        for key, leaf in flatten(value).items():
            _set(tree, f"{dotted}.{key}", leaf)
        return
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def _is_spec(value: Any) -> bool:
    return not isinstance(value, dict) or not value or bool(set(value) & {*RANGES, *SETS})


def search_space(cfg: SweepConfig) -> dict[str, tuple[str, list]]:
    """The space as {dotted field: (distribution, arguments)}; nested sections are flattened to dotted keys."""
    allowed, groups = sweepable_fields(), sections()
    space: dict[str, tuple[str, list]] = {}
    for key, spec in flatten(cfg.space, _is_spec).items():
        if key not in allowed and key not in groups:
            raise ConfigError(f"search space key {key!r} is not a training-config field that can be swept; expected "
                              f"one of {allowed}, or a section {groups} with a choice of mappings "
                              f"({', '.join(SET_BY_SWEEP)} are the same for every trial)")
        usage = (f"space.{key}: expected {{loguniform|uniform|randint: [low, high]}} or {{choice|grid: [values]}}, "
                 f"got {spec!r}")
        if key in groups:
            usage = f"space.{key}: expected {{choice|grid: [mappings of {key} fields]}}, got {spec!r}"
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ConfigError(usage)
        [(kind, args)] = spec.items()
        if kind in SETS and not (isinstance(args, list) and args):
            raise ConfigError(usage)
        if key in groups and not (kind in SETS and all(isinstance(x, dict) for x in args)):
            raise ConfigError(usage)
        if kind in RANGES:
            numbers = isinstance(args, list) and len(args) == 2 and all(
                isinstance(x, int if kind == "randint" else (int, float)) and not isinstance(x, bool) for x in args)
            if not numbers or args[0] >= args[1] or (kind == "loguniform" and args[0] <= 0):
                raise ConfigError(f"{usage} (low < high{', low > 0' if kind == 'loguniform' else ''}"
                                  f"{', integers' if kind == 'randint' else ''})")
        space[key] = (kind, args)
    if not space:
        raise ConfigError("the search space is empty; add fields under space:, e.g. "
                          "space: {optim.dense_lr: {loguniform: [0.0001, 0.01]}}")
    return space


def _train_config_path(cfg: SweepConfig) -> Path:
    path = Path(cfg.train_config)
    if not path.is_absolute() and not path.is_file():
        path = PROJECT_ROOT / path
    if not path.is_file():
        raise ConfigError(f"train_config: {cfg.train_config} does not exist (looked in the current folder and in "
                          f"{PROJECT_ROOT})")
    return path


def base_train_config(cfg: SweepConfig) -> dict[str, Any]:
    """The base training config with the sweep's fixed changes, as a mapping (what every trial starts from)."""
    path = _train_config_path(cfg)
    raw = yaml.safe_load(path.read_text()) or {}
    for key, value in flatten(cfg.train).items():
        _set(raw, key, value)
    try:
        from_dict(TrainConfig, raw)
    except ConfigError as exc:
        raise ConfigError(f"training config {path} with the sweep's train: changes: {exc}") from exc
    return raw


def trial_config(base: dict[str, Any], values: dict[str, Any]) -> TrainConfig:
    """A trial's training config: ``base`` with its sampled ``values`` (dotted field -> value)."""
    raw = copy.deepcopy(base)
    for key, value in values.items():
        _set(raw, key, value)
    return from_dict(TrainConfig, raw)


def metric_and_mode(cfg: SweepConfig) -> tuple[str, str]:
    metric = cfg.metric or DEFAULT_METRIC[cfg.task][0]
    mode = cfg.mode or ("max" if metric.endswith("auc") else "min")
    return metric, mode


def check(cfg: SweepConfig) -> tuple[dict[str, Any], dict[str, tuple[str, list]]]:
    """Refuse a sweep that could not run, before anything starts; returns the base config and the space."""
    if cfg.task not in DEFAULT_METRIC:
        raise ConfigError(f"task: unknown model {cfg.task!r}; expected one of {sorted(DEFAULT_METRIC)}")
    if cfg.mode not in ("", "max", "min"):
        raise ConfigError(f"mode: expected max or min, got {cfg.mode!r}")
    for key in ("trials", "max_concurrent", "grace_period"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}: expected at least 1, got {getattr(cfg, key)}")
    if cfg.reduction_factor < 2:
        raise ConfigError(f"reduction_factor: expected at least 2, got {cfg.reduction_factor}")
    base, space = base_train_config(cfg), search_space(cfg)
    for key, (kind, args) in space.items():  # every value a trial can get must make a valid training config
        values = args if kind in SETS else [int(x) if kind == "randint" else float(x) for x in args]
        for value in values:
            try:
                trial_config(base, {key: value})
            except ConfigError as exc:
                raise ConfigError(f"space.{key} can give a trial an invalid training config: {exc}") from exc
    epochs = from_dict(TrainConfig, base).epochs
    if cfg.grace_period >= epochs:
        raise ConfigError(f"grace_period: {cfg.grace_period} leaves no epoch to stop early in a {epochs}-epoch "
                          f"trial; use a grace_period below the epochs (or more epochs with train: {{epochs: N}})")
    return base, space


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepConfig:
    """Read a sweep config and check it (search-space keys, distributions, values) before anything runs."""
    cfg = load_config(SweepConfig, path, overrides)
    check(cfg)
    return cfg
