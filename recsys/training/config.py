"""Training configs (no torch here: they load fast, e.g. in the CLI)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from recsys.config import ConfigError, from_dict
from recsys.models.config import DLRMConfig, TwoTowerConfig

MODEL_TASKS = ("dlrm", "two-tower")


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
    # training by steps: an epoch (a validation, a checkpoint, an early-stopping check) every this many steps,
    # cycling through the training data (each pass in its own order), so at most epochs x steps_per_epoch steps
    # whatever the data's size; 0 = an epoch is one pass over the training data
    steps_per_epoch: int = 0
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
    # per model (dlrm, two-tower): fields of this config that model trains with instead, e.g.
    # {dlrm: {steps_per_epoch: 300, optim: {dense_lr: 0.01, embedding_lr: 0.01}}}; a section given is whole (its
    # unnamed keys take their defaults, not the shared section's)
    models: dict[str, dict] = field(default_factory=dict)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dlrm: DLRMConfig = field(default_factory=DLRMConfig)
    two_tower: TwoTowerConfig = field(default_factory=TwoTowerConfig)

    def for_model(self, task: str) -> TrainConfig:
        """The config ``task`` trains with: this one with its `models` entry applied (and no `models` left)."""
        own = self.models.get(task, {})
        if not own:
            return replace(self, models={})
        if "models" in own:
            raise ConfigError(f"models.{task}: a model's own settings cannot hold `models` again")
        merged = {k: v for k, v in asdict(self).items() if k != "models"} | own
        return from_dict(TrainConfig, merged, where=f"models.{task}")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.models) - set(MODEL_TASKS))
        if unknown:
            raise ConfigError(f"models: unknown model(s) {unknown}; expected some of {list(MODEL_TASKS)}")
        if self.patience < 0:
            raise ConfigError(f"patience must be >= 0 (0: no early stopping), got {self.patience}")
        if self.steps_per_epoch < 0:
            raise ConfigError(f"steps_per_epoch must be >= 0 (0: an epoch is a pass over the data), got "
                              f"{self.steps_per_epoch}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0 (0: in this process), got {self.workers}")
