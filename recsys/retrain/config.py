"""The loop's configuration (``configs/loop/default.yaml``, `recsys.retrain.loop`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from recsys.config import ConfigError, load_config

RANKER = "dlrm"  # the model the canary splits traffic for (Triton serves it; the retriever is in the app)


@dataclass(frozen=True)
class CanaryConfig:
    share: float = 0.5  # of users who get the candidate ranker
    min_impressions: int = 5000  # per variant since the canary began, before the verdict
    alpha: float = 0.05  # significance of "the candidate's CTR is higher" (one-sided z-test)
    max_wait_minutes: float = 120.0  # no verdict by then: roll back
    poll_s: float = 10.0  # how often the judge re-reads the feedback log
    grace_s: float = 3.0  # replicas' time to switch before Triton unloads a version


@dataclass(frozen=True)
class GateConfig:
    """What the registry gate asks of one model's new versions in the loop (`recsys.registry.promote`)."""

    metric: str = ""  # the test metric compared with production (e.g. test/gauc); empty: the model's primary one
    floor: tuple[str, ...] = ()  # baselines the metric must beat for either alias, e.g. [popularity, logistic]


@dataclass(frozen=True)
class LoopConfig:
    """Where the loop reads, writes and serves; paths relative to the working directory."""

    source: str = "runs/data/raw/xyzshop"  # the shop's export, read again by every cycle
    event_log: str = "runs/serving/events"  # the app's event log: its fed-back events join the new data
    data_config: str = "configs/data/default.yaml"  # ingest, validation and build settings
    data_overrides: tuple[str, ...] = ()
    train_config: str = "configs/train/default.yaml"
    train_overrides: tuple[str, ...] = ()
    models: tuple[str, ...] = ("dlrm", "two-tower")
    datasets: str = "runs/datasets"
    train_output: str = "runs/train"
    triton_run_dir: str = "runs/triton"  # the running Triton (`recsys triton start --run-dir`)
    rollout_file: str = "runs/serving/rollout.json"  # the app's rollout state
    trigger_file: str = "runs/monitor/retrain.jsonl"  # the monitor's retraining requests
    work_dir: str = "runs/loop"  # state.json and each cycle's validated data
    schedule_hours: float = 0.0  # also start a cycle this long after the last one began (0: only on requests)
    cooldown_minutes: float = 0.0  # requests that arrive sooner than this after a cycle ended wait
    canary: CanaryConfig = field(default_factory=CanaryConfig)
    gate: dict[str, GateConfig] = field(default_factory=dict)  # per model; a model not named: the default gate

    def __post_init__(self) -> None:
        unknown = sorted(set(self.models) - {"dlrm", "two-tower"})
        if unknown or RANKER not in self.models:
            raise ConfigError(f"loop config: models must include {RANKER!r} and be among dlrm, two-tower; "
                              f"got {list(self.models)}")
        if set(self.gate) - set(self.models):
            raise ConfigError(f"loop config: gate names {sorted(set(self.gate) - set(self.models))}, which the loop "
                              f"does not train (models: {list(self.models)})")
        if not 0.0 < self.canary.share < 1.0:
            raise ConfigError(f"loop config: canary.share must be within (0, 1), got {self.canary.share}")
        if not 0.0 < self.canary.alpha < 1.0:
            raise ConfigError(f"loop config: canary.alpha must be within (0, 1), got {self.canary.alpha}")
        if self.canary.min_impressions < 1:
            raise ConfigError(f"loop config: canary.min_impressions must be >= 1, got {self.canary.min_impressions}")


def load_loop_config(path: str | Path | None = None, overrides: list[str] | None = None) -> LoopConfig:
    return load_config(LoopConfig, path, overrides)
