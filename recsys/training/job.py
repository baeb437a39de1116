"""The distributed training job: Ray Train runs the Lightning loop on N workers, TorchRec shards the
embedding tables across them (`TorchRecStrategy`), and each worker reads its own shards.

``run(task, cfg)`` is what ``recsys train`` and the ``training/`` entry points call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from recsys import framework_notes
from recsys.config import from_dict
from recsys.data.dataset import Dataset
from recsys.errors import RecsysError
from recsys.evaluation.baselines import ranking_baselines
from recsys.schema import load_schema
from recsys.tracking import PROJECT, code_version, prepare_wandb_dirs, wandb_mode
from recsys.training.config import TrainConfig
from recsys.training.early_stopping import checkpoints_kept, kept_epoch, monitor_of
from recsys.training.progress import LOG_DIR, ProgressBar

TASK_OF = {"dlrm": "ranking", "two-tower": "retrieval"}
NO_EXAMPLES = {  # what a dataset without a task's examples lacks
    "ranking": "ranking examples are impressions (events of the schema's examples.ranking.event_type), labelled by "
               "clicks with the same request_id; a log without impressions trains the retriever only",
    "retrieval": "retrieval positives are views, or in a log without views clicks, adds to cart and purchases",
}


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
    """Runs on every Ray Train worker (in-process: in the caller, its Python output in the run's logs)."""
    from recsys.training.progress import output_in

    if config["cfg"]["workers"] == 0 and config.get("quiet"):
        with output_in(Path(config["run_dir"]) / LOG_DIR / "in-process.log"):
            _train(config)
    else:
        _train(config)


def _train(config: dict[str, Any]) -> None:
    import polars as pl
    import pytorch_lightning as L
    import ray.train
    import torch
    import wandb
    from pytorch_lightning.callbacks import EarlyStopping
    from pytorch_lightning.loggers import WandbLogger
    from ray.train.lightning import RayLightningEnvironment, RayTrainReportCallback, prepare_trainer
    from torch.utils.data import DataLoader

    from recsys.evaluation.ranking import ranking_report
    from recsys.evaluation.retrieval import popularity_catalogue_recall, retrieval_report
    from recsys.models.dlrm import DLRMTrain, Ranker
    from recsys.models.two_tower import TwoTower, TwoTowerTrain
    from recsys.online.features import serving_context
    from recsys.training.calibration import fit_calibration
    from recsys.training.checkpoint import load_model, record_calibration
    from recsys.training.data import (
        EpochBatches,
        click_rate,
        item_log_q,
        ranking_batches,
        read_shard,
        retrieval_batches,
    )
    from recsys.training.module import (
        CATALOGUE_K,
        Catalogue,
        KeepCheckpoints,
        ProgressFile,
        RecsysModule,
        StopWhenAsked,
    )
    from recsys.training.progress import PROGRESS_FILE, send_output_to
    from recsys.training.strategy import OneProcess, TorchRecStrategy

    framework_notes.quiet()
    task, cfg = config["task"], from_dict(TrainConfig, config["cfg"])
    run_dir = Path(config["run_dir"])
    in_process = cfg.workers == 0  # Ray Train's local mode: this is the driver's (or a Tune trial's) own process
    if in_process:
        rank, world = 0, 1
    else:
        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if in_process:
        _one_process_group()
    elif config.get("quiet"):  # this worker's whole output to the run's logs/; the driver shows a progress bar
        send_output_to(run_dir / LOG_DIR / f"worker-{rank}.log")
    schema = load_schema()
    dataset = Dataset.open(cfg.dataset, schema)
    splits = dataset.manifest.splits[TASK_OF[task]]
    description = {"task": task, "config": asdict(cfg), "schema_hash": schema.hash, "dataset_id": dataset.id,
                   "dataset_path": str(dataset.path), "cardinalities": dataset.manifest.cardinalities,
                   "code_version": config["code_version"], "run": run_dir.name, "workers": world}
    if config.get("hyperparameters"):  # a sweep trial's sampled values
        description["hyperparameters"] = config["hyperparameters"]
    torch.manual_seed(cfg.seed)
    if task == "dlrm":
        model = Ranker(schema, dataset.manifest.cardinalities, cfg.dlrm)
        model.start_at_click_rate(click_rate(dataset, schema))
        module = RecsysModule(DLRMTrain(model), cfg.optim, description)
        columns = model.spec.columns
    else:
        model = TwoTower(schema, dataset.manifest.cardinalities, cfg.two_tower)
        # the items as validation ended (the test start): each validation view's item is ranked against them all
        catalogue = Catalogue.of(dataset.at_test_start("items"), model.item_spec, schema.item_id.name,
                                 dataset.manifest.cardinalities[schema.item_id.embedding_table])
        module = RecsysModule(TwoTowerTrain(model, cfg.two_tower), cfg.optim, description, catalogue)
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
        if not shuffle:  # evaluation: all of a small split, in one batch
            batch_size = max(1, min(batch_size, fewest))
        frame = frame.head(fewest // batch_size * batch_size)
        if task == "dlrm":
            make = lambda seed, skip: ranking_batches(frame, model.spec, batch_size, seed, skip)  # noqa: E731
        else:
            make = lambda seed, skip: retrieval_batches(frame, model.user_spec, model.item_spec,  # noqa: E731
                                                        schema.item_id.name, log_q, batch_size, seed, skip)
        by_steps = shuffle and cfg.steps_per_epoch > 0  # training by steps: an epoch is that many, not one pass
        return DataLoader(EpochBatches(make, shuffle, seed=cfg.seed + 1000 * rank, epoch=lambda: module.epochs_done,
                                       steps=cfg.steps_per_epoch if by_steps else None,
                                       per_pass=fewest // batch_size), batch_size=None)

    prepare_wandb_dirs(run_dir)
    # one W&B run per training run: a restarted worker group goes on logging into the same one
    logger = WandbLogger(project=PROJECT, name=run_dir.name, id=config["wandb_id"], resume="allow",
                         save_dir=str(run_dir), offline=wandb_mode() == "offline", job_type=f"train-{task}",
                         group=config.get("group"), config=description)
    device = torch.device("cuda" if cfg.gpus_per_worker else "cpu") if in_process else None
    strategy = TorchRecStrategy(device=device)
    per_pass = min(rows_of("train", worker) for worker in range(world)) // cfg.batch_size  # (every worker's)
    if per_pass == 0:
        raise RecsysError(f"{task}: a worker's share of the training split is smaller than one batch of "
                          f"{cfg.batch_size}; lower batch_size or use fewer workers")
    steps = cfg.steps_per_epoch or per_pass  # per epoch
    keep = KeepCheckpoints(run_dir, RayTrainReportCallback.CHECKPOINT_NAME, checkpoints_kept(cfg),
                           report_to=_IN_PROCESS_CALLBACKS.get(str(run_dir)))
    callbacks = [keep if in_process else RayTrainReportCallback(), ProgressFile(run_dir / PROGRESS_FILE, steps)]
    if cfg.patience:
        callbacks.append(EarlyStopping(monitor=monitor_of(task, cfg), mode="max", patience=cfg.patience,
                                       check_on_train_epoch_end=True))
    if config.get("stop_file"):  # a sweep trial, which the sweep may stop early
        callbacks.append(StopWhenAsked(config["stop_file"]))
    trainer = L.Trainer(accelerator="gpu" if cfg.gpus_per_worker else "cpu", devices="auto", strategy=strategy,
                        plugins=[OneProcess() if in_process else RayLightningEnvironment()], callbacks=callbacks,
                        max_epochs=cfg.epochs, logger=logger, enable_checkpointing=False,
                        enable_progress_bar=rank == 0 and not config.get("quiet"), enable_model_summary=False)
    if not in_process:
        trainer = prepare_trainer(trainer)
    evaluation = [loader(split, cfg.eval_batch_size, False) for split in ("val", "test")]  # every epoch
    if in_process:  # an interrupted in-process run of the same name resumes from its newest kept checkpoint
        kept = KeepCheckpoints.saved(run_dir)
        resume_from = kept[-1] if kept else None
        trainer.fit(module, loader("train", cfg.batch_size, True), evaluation,
                    ckpt_path=None if resume_from is None else str(resume_from))
    elif (resume_from := ray.train.get_checkpoint()) is None:  # (set when the run restarts after a failure)
        trainer.fit(module, loader("train", cfg.batch_size, True), evaluation)
    else:
        with resume_from.as_directory() as folder:
            trainer.fit(module, loader("train", cfg.batch_size, True), evaluation,
                        ckpt_path=str(Path(folder) / RayTrainReportCallback.CHECKPOINT_NAME))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    probe = _probe(module, task, read_shard(dataset, TASK_OF[task], "val", 0, columns).head(PROBE_ROWS))
    if rank == 0:
        epochs = (KeepCheckpoints.reported(run_dir) if in_process else
                  [(Path(r.checkpoint.path) / RayTrainReportCallback.CHECKPOINT_NAME, r.metrics)
                   for r in ray.train.get_all_reported_checkpoints()])
        model_path, kept_metrics = kept_epoch(epochs, monitor_of(task, cfg))
        metrics |= {k: float(v) for k, v in kept_metrics.items() if k.startswith("val/")}  # the kept epoch's
        # evaluated like every later consumer will use it: rebuilt, unsharded, from the checkpoint alone, on every
        # test row the baselines see (the per-epoch test metrics saw the rows the workers could split into batches)
        trained, _ = load_model(model_path, calibrated=False)
        if task == "dlrm":  # calibrated (Platt scaling on the validation split) before anything measures it
            calibration = fit_calibration(trained, dataset, schema.label("dlrm").name, cfg.eval_batch_size) \
                if cfg.dlrm.calibrate else None
            logits = torch.tensor(probe.pop("logits"))
            if calibration is not None:
                record_calibration(model_path, calibration)
                trained.calibrate(calibration.scale, calibration.shift)
                logits = calibration.scale * logits + calibration.shift
                metrics |= {"calibration/scale": calibration.scale, "calibration/shift": calibration.shift}
            probe["scores"] = torch.sigmoid(logits).tolist()  # (the model's outputs as its checkpoint gives them)
            metrics.pop("test/auc", None)  # (a split of one class has none)
            metrics |= ranking_report(trained, dataset.read("ranking", "test"), schema.label("dlrm").name,
                                      batch_size=cfg.eval_batch_size,
                                      context=serving_context(schema, dataset.encoders(schema)))
            baselines = ranking_baselines(dataset, schema)
        else:
            retrieval, baselines = retrieval_report(trained, dataset, cfg.eval_users or None)
            metrics |= retrieval
            baselines[f"popularity_val_recall@{CATALOGUE_K}"] = popularity_catalogue_recall(
                dataset, schema.item_id.name, CATALOGUE_K)  # what registration's floor compares val/recall@100 with
        last = trainer.current_epoch - 1  # (0-based, as the epochs report themselves)
        kept = int(kept_metrics.get("epoch", last))
        summary = {"metrics": metrics, "epoch_losses": module.epoch_losses, "sharding": strategy.sharding,
                   "epochs": trainer.current_epoch, "kept_epoch": kept + 1,
                   "monitor": monitor_of(task, cfg), "workers": world,
                   "dataset_id": dataset.id, "checkpoint": str(model_path), "resumed": resume_from is not None,
                   # the trained model's outputs, to check its checkpoint against (when the last epoch is kept)
                   "probe": probe if kept == last else None, "baselines": baselines}
        run = logger.experiment
        model_artifact = wandb.Artifact(f"model-{task}-{dataset.id}", type="model", metadata={
            "schema_hash": schema.hash, "dataset_id": dataset.id, "metrics": metrics, "run": run_dir.name})
        model_artifact.add_dir(str(model_path))
        if wandb_mode() == "online":  # the dataset as an input artifact (W&B allows it online only)
            data_artifact = wandb.Artifact(f"dataset-{dataset.id}", type="dataset",
                                           metadata={"schema_hash": schema.hash})
            data_artifact.add_reference(f"file://{dataset.path.resolve() / 'manifest.json'}")
            run.use_artifact(data_artifact)
        run.log_artifact(model_artifact, aliases=["latest", dataset.id])
        run.summary.update({**metrics, **{f"baseline/{k}": v for k, v in baselines.items()},
                            "sharding": strategy.sharding, "epoch_losses": module.epoch_losses,
                            "checkpoint": str(model_path)})
        summary["wandb_run"] = run.dir
        run.finish()
        # beside the run's checkpoints, so tools and tests need no W&B reader
        (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2))


# run folder -> the Ray Train callbacks of an in-process run (local mode has no controller to call them)
_IN_PROCESS_CALLBACKS: dict[str, list] = {}


def _one_process_group() -> None:
    """A one-process gloo group for TorchRec in local mode (created once per process, then reused)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    from recsys.deploy.ports import free_port

    # (an address of its own rather than the torchrun variables, which Ray Train's local mode would take for a
    # multi-process launch)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)


PROBE_ROWS = 64  # validation rows scored at the end of a run, to check that a reloaded checkpoint agrees


def _probe(module, task: str, rows) -> dict[str, list]:
    """The trained (sharded) model's outputs for ``rows``, as plain lists. Every rank must call it."""
    import torch

    from recsys.models.inputs import make_batch

    model = module.model
    module.eval()
    with torch.no_grad():
        if task == "dlrm":
            spec = model.module.spec
            return {"logits": model(make_batch(rows, spec)).tolist()}
        inner = model.module
        users, items = model(make_batch(rows, inner.user_spec), make_batch(rows, inner.item_spec))
        return {"user_vectors": users.tolist(), "item_vectors": items.tolist()}


@dataclass
class TrainResult:
    task: str
    dataset_id: str
    metrics: dict[str, float]
    baselines: dict[str, float]  # popularity and (on generated data) the oracle, on the test split
    # (``rows`` / ``retrieval_users``: how many test rows / users they were scored on, as the model's test/ metrics)
    # metrics: val/ and test/ loss; ranking: test/auc, test/logloss and test/rows over every row of the test split
    # (the checkpoint rebuilt and scored after training); retrieval: recall@K, ndcg@K against every item
    epoch_losses: list[float]  # mean training loss per epoch
    sharding: dict[str, str]  # embedding table -> how TorchRec's planner sharded it
    path: str  # the run folder
    checkpoint: str  # the final checkpoint (`recsys.training.checkpoint.load_model` rebuilds the model from it)
    resumed: bool  # whether the run restarted from a checkpoint after a failure
    dataset_path: str = ""  # the dataset folder it trained on
    monitor: str | None = None  # with early stopping: the validation metric that chose the kept epoch
    kept_epoch: int = 0  # the epoch (1-based) whose checkpoint is kept: the best by ``monitor``, else the last


def _ray_logs_to(path: Path) -> None:
    """Ray's own log lines in this process (the driver) to ``path`` instead of the terminal."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("ray", "ray.train", "ray.tune", "ray.data"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False


_RAY_STARTING = threading.Lock()  # (runs trained at once, in threads, start one cluster)


def ensure_ray(workers: int, quiet: bool = True) -> None:
    """Connect to the running cluster (``RAY_ADDRESS``) or start a local one, unless this process has one;
    ``quiet``: Ray's workers' output stays in their logs."""
    import ray

    with _RAY_STARTING:
        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        options = {"log_to_driver": not quiet, "logging_level": logging.WARNING if quiet else logging.INFO}
        if os.environ.get("RAY_ADDRESS"):  # a running cluster (e.g. the serving one): its resources, not ours
            ray.init(**options)
        else:  # room for two runs' workers at once (`recsys train both`)
            ray.init(num_cpus=max(4, 2 * workers), include_dashboard=False, **options)


def run(task: str, cfg: TrainConfig, group: str | None = None, hyperparameters: dict[str, Any] | None = None,
        callbacks: list | None = None, stop_file: str | None = None, progress: bool = True,
        bar_position: int = 0) -> TrainResult:
    """Train ``task`` (dlrm | two-tower) on ``cfg.workers`` Ray workers; starts a local Ray if none runs.

    With ``progress`` (the CLI, the loop) the terminal shows a progress bar and a line per epoch; the workers'
    output and Ray's own log lines go to ``<run>/logs/``. A sweep trial passes ``progress=False``, its W&B
    ``group`` (the sweep), its sampled ``hyperparameters`` (added to the W&B config), extra Ray Train
    ``callbacks`` (Tune's report callback) and a ``stop_file``: training ends cleanly, at the next step, once that
    file exists. ``bar_position``: which line its progress bar takes, when several runs train at once.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if task not in TASK_OF:
        raise RecsysError(f"unknown model {task!r}; expected one of {sorted(TASK_OF)}")
    cfg = cfg.for_model(task)
    dataset = Dataset.open(cfg.dataset or newest_dataset(), load_schema())
    cfg = replace(cfg, dataset=str(dataset.path.resolve()))
    examples = dataset.manifest.splits[TASK_OF[task]]
    if not examples["train"]["rows"]:
        raise RecsysError(f"{task}: dataset {dataset.id} has no {TASK_OF[task]} training examples, so there is "
                          f"nothing to train; {NO_EXAMPLES[TASK_OF[task]]}")
    for split in ("train", "val"):
        worker_shards(len(dataset.manifest.splits[TASK_OF[task]][split]["shards"]), max(cfg.workers, 1), 0)
    if cfg.patience and not min(s["rows"] for s in dataset.manifest.splits[TASK_OF[task]]["val"]["shards"]):
        raise RecsysError(f"early stopping (patience {cfg.patience}) watches the validation split, but dataset "
                          f"{dataset.id} has a validation shard without {TASK_OF[task]} examples; set patience=0 "
                          f"or give the split more days (build.val_days)")
    name = cfg.name or f"{task}-{dataset.id}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.output).resolve() / name
    if (run_dir / "metrics.json").is_file():
        raise RecsysError(f"run {name} already finished ({run_dir}); choose another name to train again")
    run_dir.mkdir(parents=True, exist_ok=True)
    if progress:
        _ray_logs_to(run_dir / LOG_DIR / "ray-driver.log")
    ensure_ray(cfg.workers, progress)
    if progress:
        where = (f"on {cfg.workers} Ray Train worker(s); their output and Ray's: {run_dir / LOG_DIR}" if cfg.workers
                 else "in this process (Ray Train's local mode)")
        print(f"training {task} {where}\n", end="", flush=True)  # (one write: runs print from threads)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"task": task, "cfg": asdict(cfg), "run_dir": str(run_dir), "code_version": code_version(),
                           "wandb_id": hashlib.sha1(str(run_dir).encode()).hexdigest()[:12], "group": group,
                           "hyperparameters": hyperparameters, "stop_file": stop_file, "quiet": progress},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpus_per_worker > 0,
                                     resources_per_worker={"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker
                                     else None),
        # an interrupted run of the same name (same folder) resumes from its newest checkpoint
        run_config=RunConfig(storage_path=str(run_dir.parent), name=name,
                             failure_config=FailureConfig(max_failures=cfg.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=checkpoints_kept(cfg)),
                             callbacks=callbacks),
    )
    if cfg.workers == 0 and callbacks:
        _IN_PROCESS_CALLBACKS[str(run_dir)] = list(callbacks)
    bar = ProgressBar(run_dir, f"{task} {name}", position=bar_position) if progress else None
    if bar is not None:
        bar.start()
    try:
        result = trainer.fit()
    finally:
        _IN_PROCESS_CALLBACKS.pop(str(run_dir), None)
        if bar is not None:
            bar.stop(finished=(run_dir / "metrics.json").is_file())
    if result.error:
        raise RecsysError(f"training failed: {result.error}" + (f" (the workers' output: {run_dir / LOG_DIR})"
                                                                if progress else ""))
    summary = json.loads((run_dir / "metrics.json").read_text())
    if cfg.export:
        from recsys.export.exporter import export_checkpoint

        export_checkpoint(summary["checkpoint"], run_dir / "export")
    return TrainResult(task=task, dataset_id=dataset.id, metrics=summary["metrics"], baselines=summary["baselines"],
                       epoch_losses=summary["epoch_losses"], sharding=summary["sharding"], path=str(run_dir),
                       checkpoint=summary["checkpoint"], resumed=summary["resumed"], dataset_path=cfg.dataset,
                       monitor=summary.get("monitor"), kept_epoch=summary["kept_epoch"])


def run_together(configs: dict[str, TrainConfig], progress: bool = True) -> dict[str, TrainResult]:
    """Train several models (task -> its config) at once on one cluster, each from a thread of this process: most
    of a run is its processes starting (importing torch, TorchRec, Lightning), which runs can overlap. Runs in this
    process (``workers: 0``) train one after the other."""
    from concurrent.futures import ThreadPoolExecutor

    if any(cfg.workers == 0 for cfg in configs.values()):
        return {task: run(task, cfg, progress=progress) for task, cfg in configs.items()}
    with ThreadPoolExecutor(len(configs)) as pool:
        futures = {task: pool.submit(run, task, cfg, progress=progress, bar_position=n)
                   for n, (task, cfg) in enumerate(configs.items())}
        return {task: future.result() for task, future in futures.items()}
