"""The serving configuration: one frozen dataclass, loaded from YAML with `recsys.config.load_config`.

``serving/config.yaml`` (the Ray Serve config file for ``serve run`` / ``serve deploy``) passes a path to such
a file and ``key=value`` overrides as the application's ``args``; ``recsys serve`` reads the same file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys.config import ConfigError, load_config


@dataclass(frozen=True)
class BatchingConfig:
    """`@serve.batch` settings of the retriever (query tower + ANN search for several requests at once)."""

    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.002  # how long a batch waits to fill; adds at most this to a request


@dataclass(frozen=True)
class StoreConfig:
    """The live feature store (`recsys.store`): features as of now from the event stream, instead of the dataset's
    snapshot."""

    enabled: bool = False  # False: every feature from the dataset's online tables (a snapshot)
    url: str = ""  # redis:// URL of a Valkey / Redis elsewhere; "" = $RECSYS_STORE_URL, else the one in run_dir
    run_dir: str = "runs/store"  # `recsys store start`'s folder (its address and password)
    namespace: str = "rs"
    clock: str = "events"  # read as of: just after the newest applied event ("events") or the machine's ("wall")
    appendfsync: str = "everysec"  # `recsys serve` starting the store: fsync the AOF every second, or "always"
    timeout_s: float = 0.05  # a store slower than this (or down): snapshot features, flagged stale_features
    retry_s: float = 1.0  # after a failure, snapshot features for this long before the store is tried again

    def __post_init__(self) -> None:
        from recsys.store.clock import CLOCKS
        from recsys.store.server import FSYNC_POLICIES

        if self.appendfsync not in FSYNC_POLICIES:
            raise ConfigError(f"serving config: store.appendfsync must be one of {', '.join(FSYNC_POLICIES)}, got "
                              f"{self.appendfsync!r}")
        if self.clock not in CLOCKS:
            raise ConfigError(f"serving config: store.clock must be one of {', '.join(CLOCKS)}, got {self.clock!r}")
        for name in ("timeout_s", "retry_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"serving config: store.{name} must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class ServingConfig:
    """What the Ray Serve application serves and how.

    Paths are read by the replicas: on a cluster they must be visible to every node (a shared volume).
    """

    dataset: str = ""  # dataset folder (online tables, encoders); empty = the newest under runs/datasets
    retrieval_export: str = ""  # a two-tower export (`recsys export`): query_tower/ and items/
    triton_url: str = "127.0.0.1:8001"  # Triton's gRPC address (host:port)
    ranker_model: str = "dlrm"  # the Triton model that ranks; "" = no ranker: the retrieval order, as ranked
    ranker_version: str = ""  # empty = Triton's newest loaded version
    event_log: str = "runs/serving/events"  # /feedback appends JSON lines under <event_log>/events/
    rollout_file: str = "runs/serving/rollout.json"  # production / candidate versions (recsys.deploy.rollout)
    rollout_poll_s: float = 0.5  # how often a replica checks the rollout file for changes
    candidates: int = 100  # N items retrieved per request (before filtering)
    max_k: int = 100  # largest k a request may ask for
    max_exclude: int = 1000  # most item ids a request may exclude
    max_body_bytes: int = 65536  # larger request bodies get 413
    rank_deadline_s: float = 0.2  # Triton slower than this (or unreachable): retrieval order, flagged degraded
    retrieve_deadline_s: float = 1.0  # retrieval slower than this: popular items, flagged degraded
    ready_timeout_s: float = 1.0  # how long /readyz waits for Triton
    popular_items: int = 500  # size of the cold-start popularity list
    host: str = "127.0.0.1"  # `recsys serve`: where the load balancer listens
    port: int = 8000
    run_dir: str = "runs/serving/run"  # `recsys serve`: the load balancer's config and log
    triton_run_dir: str = ""  # `recsys serve` restarts the Triton started from here if it dies ("" = leave it)
    route_prefix: str = "/"
    ingress_replicas: int = 2  # HTTP ingress replicas (behind the load balancer `recsys serve` starts)
    api_keys_file: str = ""  # the shop's API keys for /events and /feedback, one per line (serving/auth.py)
    require_api_key: str = "auto"  # auto: whenever the app listens beyond loopback; true: always; false: never
    access_log: bool = False  # Ray Serve's per-request log lines of each replica (off: they cost CPU under load)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    store: StoreConfig = field(default_factory=StoreConfig)

    def __post_init__(self) -> None:
        for name in ("candidates", "max_k", "max_body_bytes", "popular_items", "ingress_replicas"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serving config: {name} must be >= 1, got {getattr(self, name)}")
        for name in ("rank_deadline_s", "retrieve_deadline_s", "ready_timeout_s", "rollout_poll_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"serving config: {name} must be > 0, got {getattr(self, name)}")


def load_serving_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ServingConfig:
    return load_config(ServingConfig, path, overrides)


def from_args(args: dict[str, Any]) -> ServingConfig:
    """The config from a Ray Serve application's ``args``: ``{config: <yaml>, set: [key=value, ...]}``."""
    unknown = sorted(set(args) - {"config", "set"})
    if unknown:
        raise ConfigError(f"serving application args: unknown key(s) {unknown}; expected 'config' and 'set'")
    overrides = args.get("set") or []
    if not isinstance(overrides, list):
        raise ConfigError("serving application args: 'set' must be a list of key=value strings")
    return load_serving_config(args.get("config"), [str(o) for o in overrides])
