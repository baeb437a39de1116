"""Training configs (no torch here: they load fast, e.g. in the CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field

from recsys.config import ConfigError
from recsys.models.config import DLRMConfig, TwoTowerConfig


@dataclass(frozen=True)
class OptimConfig:
    dense_lr: float = 1e-3  # Adam, for MLPs and interaction layers
    embedding_lr: float = 0.05  # Adagrad for the sharded embedding tables (TorchRec fused optimiser)
    weight_decay: float = 0.0  # dense parameters only


@dataclass(frozen=True)
class TrainConfig:
    """A training run; every field can be overridden with ``--set key=value``."""

    dataset: str = ""  # dataset folder (`recsys data build` output); empty = the newest under runs/datasets
    # Ray Train workers (processes), each reading its share of the shards; 0 = in this process (Ray Train's local
    # mode: no worker processes to start, no fault tolerance; for small data, debugging and tests)
    workers: int = 2
    gpus_per_worker: int = 0  # 0 = CPU with gloo; >= 1 uses CUDA and NCCL
    batch_size: int = 1024  # examples per worker per step
    eval_batch_size: int = 4096
    eval_users: int = 0  # retrieval: test users evaluated against every item (a seeded sample); 0 = all
    epochs: int = 3  # the most epochs; with ``patience`` training may stop sooner
    # early stopping: training ends once the validation metric ``monitor`` has not improved for ``patience`` epochs,
    # and the model kept is the best epoch's (not the last); 0 trains every epoch and keeps the last
    patience: int = 0
    monitor: str = ""  # empty: the model's own (val/auc for the DLRM, val/recall@100 for the two-tower)
    seed: int = 0
    output: str = "runs/train"  # Ray Train storage: checkpoints and results
    name: str = ""  # run folder under output; empty = <model>-<dataset id>-<time>. An unfinished run resumes
    max_failures: int = 2  # worker failures survived by restarting from the last checkpoint (-1: no limit)
    keep_checkpoints: int = 2  # newest epoch checkpoints kept (at least patience + 1: the best is among them)
    export: bool = False  # export the trained model (`recsys export`) into <run>/export when training ends
    optim: OptimConfig = field(default_factory=OptimConfig)
    dlrm: DLRMConfig = field(default_factory=DLRMConfig)
    two_tower: TwoTowerConfig = field(default_factory=TwoTowerConfig)

    def __post_init__(self) -> None:
        if self.patience < 0:
            raise ConfigError(f"patience must be >= 0 (0: no early stopping), got {self.patience}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0 (0: in this process), got {self.workers}")
