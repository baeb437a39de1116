"""The distributed training job: Ray Train runs the Lightning loop on N workers, TorchRec shards the
embedding tables across them (`TorchRecStrategy`), and each worker reads its own shards.

``run(task, cfg)`` is what ``recsys train`` and the ``training/`` entry points call.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from recsys.config import from_dict
from recsys.data.dataset import Dataset
from recsys.errors import RecsysError
from recsys.evaluation.baselines import ranking_baselines
from recsys.schema import load_schema
from recsys.tracking import PROJECT, code_version, prepare_wandb_dirs, wandb_mode
from recsys.training.config import TrainConfig

TASK_OF = {"dlrm": "ranking", "two-tower": "retrieval"}


def newest_dataset(root: str | Path = "runs/datasets") -> Path:
    found = sorted(Path(root).glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RecsysError(f"no dataset under {root}; build one with `recsys data build` or set dataset=…")
    return found[-1].parent


def worker_shards(n_shards: int, world: int, rank: int) -> list[int]:
    """The shards worker ``rank`` of ``world`` reads: every world-th one, so the split is disjoint."""
    if world > n_shards or n_shards % world:
        raise RecsysError(f"the dataset has {n_shards} shards per split, which {world} workers cannot share "
                          f"evenly; use --workers dividing {n_shards} or rebuild with build.shards={world}")
    return list(range(rank, n_shards, world))


def _worker_loop(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import polars as pl
    import pytorch_lightning as L
    import ray.train
    import torch
    import wandb
    from pytorch_lightning.loggers import WandbLogger
    from ray.train.lightning import RayLightningEnvironment, prepare_trainer
    from torch.utils.data import DataLoader

    from recsys.models.dlrm import DLRMTrain, Ranker
    from recsys.models.two_tower import TwoTower, TwoTowerTrain
    from recsys.training.data import EpochBatches, item_log_q, ranking_batches, read_shard, retrieval_batches
    from recsys.training.module import RecsysModule
    from recsys.training.strategy import TorchRecStrategy

    task, cfg = config["task"], from_dict(TrainConfig, config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    schema = load_schema()
    dataset = Dataset.open(cfg.dataset, schema)
    splits = dataset.manifest.splits[TASK_OF[task]]
    torch.manual_seed(cfg.seed)
    if task == "dlrm":
        model = Ranker(schema, dataset.manifest.cardinalities, cfg.dlrm)
        module = RecsysModule(DLRMTrain(model), cfg.optim)
        columns = model.spec.columns
    else:
        model = TwoTower(schema, dataset.manifest.cardinalities, cfg.two_tower)
        module = RecsysModule(TwoTowerTrain(model, cfg.two_tower), cfg.optim)
        columns = list(dict.fromkeys([*model.user_spec.columns, *model.item_spec.columns]))
        log_q = item_log_q(dataset, schema)

    def rows_of(split: str, worker: int) -> int:
        shards = splits[split]["shards"]
        return sum(shards[k]["rows"] for k in worker_shards(len(shards), world, worker))

    def loader(split: str, batch_size: int, shuffle: bool) -> DataLoader:
        mine = worker_shards(len(splits[split]["shards"]), world, rank)
        frame = pl.concat([read_shard(dataset, TASK_OF[task], split, k, columns) for k in mine])
        # every worker takes the same number of steps: the sharded tables exchange data at each one
        fewest = min(rows_of(split, worker) for worker in range(world))
        frame = frame.head(fewest // batch_size * batch_size)
        if task == "dlrm":
            make = lambda seed: ranking_batches(frame, model.spec, batch_size, seed)  # noqa: E731
        else:
            make = lambda seed: retrieval_batches(frame, model.user_spec, model.item_spec,  # noqa: E731
                                                  schema.item_id.name, log_q, batch_size, seed)
        return DataLoader(EpochBatches(make, shuffle, seed=cfg.seed + 1000 * rank), batch_size=None)

    run_dir = Path(config["run_dir"])
    prepare_wandb_dirs(run_dir)
    logger = WandbLogger(project=PROJECT, name=run_dir.name, save_dir=str(run_dir), offline=wandb_mode() == "offline",
                         job_type=f"train-{task}", group=config.get("group"), config={
                             "task": task, "config": asdict(cfg), "schema_hash": schema.hash, "dataset_id": dataset.id,
                             "dataset_path": str(dataset.path), "code_version": config["code_version"],
                             "workers": world})
    strategy = TorchRecStrategy()
    trainer = L.Trainer(accelerator="gpu" if cfg.gpus_per_worker else "cpu", devices="auto", strategy=strategy,
                        plugins=[RayLightningEnvironment()], max_epochs=cfg.epochs, logger=logger,
                        enable_checkpointing=False, enable_progress_bar=rank == 0, enable_model_summary=False)
    trainer = prepare_trainer(trainer)
    evaluation = [loader(split, cfg.eval_batch_size, False) for split in ("val", "test")]  # every epoch
    trainer.fit(module, loader("train", cfg.batch_size, True), evaluation)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    summary = {"metrics": metrics, "epoch_losses": module.epoch_losses, "sharding": strategy.sharding,
               "epochs": trainer.current_epoch,
               "workers": world, "dataset_id": dataset.id}
    if rank == 0:
        if wandb_mode() == "online":  # the dataset as an input artifact (W&B allows it online only)
            artifact = wandb.Artifact(f"dataset-{dataset.id}", type="dataset", metadata={"schema_hash": schema.hash})
            artifact.add_reference(f"file://{dataset.path.resolve() / 'manifest.json'}")
            logger.experiment.use_artifact(artifact)
        logger.experiment.summary.update({"sharding": strategy.sharding, "epoch_losses": module.epoch_losses})
        summary["wandb_run"] = logger.experiment.dir
        logger.experiment.finish()
        # beside the run's checkpoints, so tools and tests need no W&B reader
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    ray.train.report(metrics)


@dataclass
class TrainResult:
    task: str
    dataset_id: str
    metrics: dict[str, float]
    baselines: dict[str, float]  # popularity and (on generated data) the oracle, on the test split
    epoch_losses: list[float]  # mean training loss per epoch
    sharding: dict[str, str]  # embedding table -> how TorchRec's planner sharded it
    path: str


def run(task: str, cfg: TrainConfig) -> TrainResult:
    """Train ``task`` (dlrm | two-tower) on ``cfg.workers`` Ray workers; starts a local Ray if none runs."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if task not in TASK_OF:
        raise RecsysError(f"unknown model {task!r}; expected one of {sorted(TASK_OF)}")
    dataset = Dataset.open(cfg.dataset or newest_dataset(), load_schema())
    cfg = replace(cfg, dataset=str(dataset.path.resolve()))
    for split in ("train", "val"):
        worker_shards(len(dataset.manifest.splits[TASK_OF[task]][split]["shards"]), cfg.workers, 0)
    if not ray.is_initialized():
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(num_cpus=max(4, cfg.workers + 2), include_dashboard=False, log_to_driver=True)
    name = f"{task}-{dataset.id}"
    run_dir = Path(cfg.output).resolve() / name
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"task": task, "cfg": asdict(cfg), "run_dir": str(run_dir), "code_version": code_version()},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpus_per_worker > 0,
                                     resources_per_worker={"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker
                                     else None),
        run_config=RunConfig(storage_path=str(run_dir.parent), name=name),
    )
    result = trainer.fit()
    if result.error:
        raise RecsysError(f"training failed: {result.error}")
    summary = json.loads((run_dir / "metrics.json").read_text())
    baselines = ranking_baselines(dataset, load_schema()) if task == "dlrm" else {}
    if baselines:
        summary["baselines"] = baselines
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    return TrainResult(task=task, dataset_id=dataset.id, metrics=summary["metrics"], baselines=baselines,
                       epoch_losses=summary["epoch_losses"], sharding=summary["sharding"], path=str(run_dir))
