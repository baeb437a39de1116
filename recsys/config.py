"""Typed configs: YAML at the edge, frozen dataclasses inside.

``load_config(DataConfig, "configs/data/default.yaml", ["generator.seed=3"])`` reads the file, applies
``--set``-style overrides, and checks every key and type, naming the exact field on a mistake.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from recsys.errors import RecsysError

T = TypeVar("T")


class ConfigError(RecsysError, ValueError):
    """A config file or override is invalid; the message names the field and what was expected."""


@dataclass(frozen=True)
class DriftConfig:
    """Preference shift: from ``start_day`` on, every user's taste moves towards a new random one."""

    start_day: int | None = None  # day index (0-based) the shift happens; None = no shift
    strength: float = 0.8  # 0 = no change, 1 = entirely new preferences


@dataclass(frozen=True)
class GeneratorConfig:
    """XYZShopSmart synthetic shop: sizes, time span and the behaviour model's knobs."""

    seed: int = 7
    n_users: int = 20_000
    n_items: int = 5_000
    n_categories: int = 40
    n_brands: int = 300
    target_events: int = 2_000_000  # approximate total number of events
    start_date: str = "2026-09-01"  # first day of events (UTC)
    days: int = 60
    latent_dim: int = 16
    slate_size: int = 10  # items per recommendation list (impressions per request)
    requests_per_session: float = 1.5  # mean recommendation lists shown per session
    organic_views_per_session: float = 1.0  # mean views from search / browsing per session
    popularity_exponent: float = 1.05  # Zipf exponent of item popularity
    affinity_scale: float = 2.5  # weight of user-item affinity in the click logit
    popularity_weight: float = 0.35  # weight of log-popularity in the click logit
    position_decay: float = 0.6  # click logit penalty: position_decay * log2(1 + position)
    click_bias: float = -3.2  # base click logit
    cart_bias: float = -1.2  # view -> add_to_cart logit bias
    purchase_prob: float = 0.35  # add_to_cart -> purchase
    personalised_share: float = 0.5  # share of slate items the shop's current recommender personalises
    chunk_events: int = 1_000_000  # events per written part; bounds memory
    drift: DriftConfig = field(default_factory=DriftConfig)


@dataclass(frozen=True)
class ValidationConfig:
    shop_opened: str = "2020-01-01"  # events before this are rejected
    max_bad_row_share: float = 0.05  # more bad rows than this (in any table) stops the run
    future_tolerance_minutes: int = 5  # clock skew allowed for "timestamp in the future"
    # batch statistics checks against a reference profile (a previous validation or dataset)
    max_volume_drop: float = 0.5  # events per day may fall by at most this share
    max_null_rate_increase: float = 0.05  # a column's null rate may rise by at most this much
    max_new_category_share: float = 0.2  # share of rows with values the reference never saw
    min_price: float | None = 0.0  # items priced below this are quarantined; None: any price (a shop's own scaling)
    on_stats_violation: str = "warn"  # warn | fail


@dataclass(frozen=True)
class BuildConfig:
    val_days: int = 7  # the last days before the test period
    test_days: int = 7  # the last days of the data
    shards: int = 2  # Parquet shards per split (one per training worker)
    chunk_rows: int = 1_000_000  # examples computed and written at a time: bounds memory, not the output
    # log-and-train: the app's event-log folders; ranking examples the app logged take its logged inputs
    # (recsys.data.logged_inputs; the logs' content is in the dataset id, not these paths)
    logged_inputs: tuple[str, ...] = ()


# build settings that change how a dataset is computed but never what it contains (not in its id)
EXECUTION_ONLY = frozenset({"chunk_rows", "logged_inputs"})


@dataclass(frozen=True)
class IngestConfig:
    """Bring-your-own-data: where a shop's export lies and how its columns map to ours."""

    events: str = "events/*.parquet"  # glob, relative to the source folder
    users: str | None = "users.parquet"  # None: no users table; one row per user of the events (recsys.data.derive)
    items: str | None = "items.parquet"  # None: no items table; one row per item of the events, attributes unknown
    format: str = "auto"  # auto (by extension) | parquet | csv | jsonl
    columns: dict[str, dict[str, str]] = field(default_factory=dict)  # table -> {ours: theirs}
    event_types: dict[str, str] = field(default_factory=dict)  # their event type -> ours
    timestamp_format: str | None = None  # strptime format for text timestamps; None = ISO 8601
    timestamp_unit: str | None = None  # s | ms | us for numeric epoch timestamps
    event_type: str | None = None  # no event type column: every event is this one (e.g. view, for a ratings file)
    ids: dict[str, str] = field(default_factory=dict)  # id column -> integer | text (default: told by the values)
    session_gap_minutes: int = 30  # no session_id column: a user's new session starts after this much inactivity
    derive_empty_sessions: bool = False  # an empty session_id is derived as above (else the row is quarantined)


@dataclass(frozen=True)
class DataConfig:
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    build: BuildConfig = field(default_factory=BuildConfig)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, typing.get_args(tp)[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_t, val_t = typing.get_args(tp)
        return {_coerce(k, key_t, where): _coerce(v, val_t, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], raw: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - fields)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown config key(s) {[prefix + k for k in unknown]}; "
                          f"expected one of {sorted(fields)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in raw.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested mapping in place."""
    if "=" not in override:
        raise ConfigError(f"override {override!r}: expected key=value, e.g. generator.seed=3")
    key, text = override.split("=", 1)
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(text)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read a YAML config into ``cls``; ``overrides`` are ``key=value`` strings applied on top."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for override in overrides or []:
        apply_override(raw, override)
    return from_dict(cls, raw)
