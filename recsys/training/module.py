"""The one training loop: a LightningModule for both models.

The task (``ranking`` or ``retrieval``) decides the model, its loss wrapper and the validation metrics;
the loop itself (steps, optimisers, logging, checkpoints) is shared. Embedding tables that TorchRec shards
(table-, column-, row-wise) are trained by its optimiser applied in the backward pass, fused into the
kernels; the small tables its planner replicates on every worker (data-parallel) become ordinary
replicated parameters and train with the dense parameters' optimiser.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytorch_lightning as L
import torch
from torchrec import EmbeddingBagCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from recsys.evaluation.metrics import auc, catalogue_hits, log_loss
from recsys.models.dlrm import DLRMTrain, Ranker
from recsys.models.inputs import Batch, InputSpec, make_batch
from recsys.models.two_tower import TwoTower, TwoTowerTrain
from recsys.training.config import OptimConfig
from recsys.training.data import RetrievalBatch

EVAL_SPLITS = ("val", "test")  # the evaluation dataloaders, in order
CATALOGUE_K = 100  # retrieval's validation metric: recall@100 of each validation pair against every item


class RecsysModule(L.LightningModule):
    """Trains a `Ranker` on ranking batches or a `TwoTower` on retrieval batches."""

    def __init__(self, train_wrapper: DLRMTrain | TwoTowerTrain, optim: OptimConfig,
                 description: dict | None = None, catalogue: Catalogue | None = None):
        """``description`` (task, config, schema hash, dataset id …) goes into every checkpoint. ``catalogue``
        (retrieval): every item's inputs, against which each validation pair's item is ranked (val/recall@100)."""
        super().__init__()
        self.train_wrapper, self.optim = train_wrapper, optim  # the wrapper holds the model: one copy of it
        self.description = description or {}
        self.catalogue = catalogue
        self._item_vectors: torch.Tensor | None = None
        embeddings = [p for m in self.model.modules() if isinstance(m, EmbeddingBagCollection)
                      for p in m.parameters()]
        apply_optimizer_in_backward(torch.optim.Adagrad, embeddings, {"lr": optim.embedding_lr})
        self._outputs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._hits: dict[str, list[np.ndarray]] = {}
        self._step_started: float | None = None
        self._epoch_started, self._epoch_examples = 0.0, 0
        self.epoch_losses: list[float] = []  # mean training loss of each epoch, all workers

    @property
    def epochs_done(self) -> int:
        """Training epochs finished, including those before a resume (seeds each epoch's shuffle)."""
        return len(self.epoch_losses)

    @property
    def model(self) -> Ranker | TwoTower:
        return self.train_wrapper.model

    def on_train_epoch_start(self) -> None:
        self._epoch_started, self._epoch_examples = time.perf_counter(), 0

    def _loss(self, batch: Batch | RetrievalBatch) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, RetrievalBatch):
            return self.train_wrapper(batch.users, batch.items, batch.item_ids, batch.log_q)
        return self.train_wrapper(batch)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def training_step(self, batch: Batch | RetrievalBatch, batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("train/loss", loss, batch_size=len(batch), prog_bar=True, on_epoch=True, sync_dist=True)
        return loss

    def on_train_epoch_end(self) -> None:
        seconds = max(time.perf_counter() - self._epoch_started, 1e-9)
        # summed over workers: the job's training throughput this epoch
        self.log("train/epoch_examples_per_s", self._epoch_examples / seconds, sync_dist=True, reduce_fx="sum")
        self._record_epoch_loss()

    def _record_epoch_loss(self) -> None:
        """Once per epoch, from whichever comes first: this epoch's end or its checkpoint (callbacks' epoch-end
        hooks, where Ray's checkpoint is saved, run before the module's)."""
        if len(self.epoch_losses) == self.current_epoch and "train/loss_epoch" in self.trainer.callback_metrics:
            self.epoch_losses.append(float(self.trainer.callback_metrics["train/loss_epoch"]))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self._epoch_examples += len(batch)
        if self._step_started is not None:
            seconds = time.perf_counter() - self._step_started
            self.log("train/examples_per_s", len(batch) / max(seconds, 1e-9), batch_size=len(batch))
        for i, group in enumerate(self.trainer.optimizers[0].param_groups):
            self.log(f"train/lr_dense_{i}", group["lr"], batch_size=len(batch))

    def _tower(self, name: str) -> torch.nn.Module:
        model = self.model
        return getattr(getattr(model, "module", model), name)  # (TorchRec's DistributedModelParallel wraps it)

    def on_validation_epoch_start(self) -> None:
        if self.catalogue is not None:  # every worker, in step: the item tower's tables may be sharded
            with torch.no_grad():
                self._item_vectors = self._tower("item_tower")(self.catalogue.inputs.to(self.device))

    def _evaluate_step(self, batch: Batch | RetrievalBatch, prefix: str) -> None:
        loss, logits = self._loss(batch)
        self.log(f"{prefix}/loss", loss, batch_size=len(batch), prog_bar=prefix == "val", sync_dist=True,
                 add_dataloader_idx=False)
        if isinstance(batch, Batch) and batch.labels is not None:
            probs = torch.sigmoid(logits).detach().cpu().numpy()
            self._outputs.setdefault(prefix, []).append((probs, batch.labels.cpu().numpy()))
        if isinstance(batch, RetrievalBatch) and prefix == "val" and self._item_vectors is not None:
            with torch.no_grad():
                users = self._tower("user_tower")(batch.users)
            rows = self.catalogue.rows(batch.item_ids).to(users.device)
            hits = catalogue_hits(users, self._item_vectors, rows, CATALOGUE_K).cpu().numpy()
            self._hits.setdefault(prefix, []).append(hits)

    def _evaluate_end(self, prefix: str) -> None:
        """AUC and log-loss over every worker's rows (ranking); recall@100 against the catalogue (retrieval)."""
        hits = _gathered(self._hits.pop(prefix, []))
        if hits:
            self.log(f"{prefix}/recall@{CATALOGUE_K}", float(np.concatenate(hits).mean()), add_dataloader_idx=False)
        outputs = _gathered(self._outputs.pop(prefix, []))
        if not outputs:
            return
        probs = np.concatenate([p for p, _ in outputs])
        labels = np.concatenate([y for _, y in outputs])
        if 0 < labels.sum() < len(labels):
            self.log(f"{prefix}/auc", auc(labels, probs), add_dataloader_idx=False)
        self.log(f"{prefix}/logloss", log_loss(labels, probs), add_dataloader_idx=False)

    def validation_step(self, batch: Batch | RetrievalBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Dataloader 0 is the validation split; a second one, if given, is the test split."""
        self._evaluate_step(batch, EVAL_SPLITS[dataloader_idx])

    def on_validation_epoch_end(self) -> None:
        for prefix in EVAL_SPLITS:
            self._evaluate_end(prefix)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # keyed by parameter name, so checkpoints hold its state by name and load it in place
        dense = dict(in_backward_optimizer_filter(self.named_parameters()))
        return KeyedOptimizerWrapper(dense, lambda params: torch.optim.Adam(
            params, lr=self.optim.dense_lr, weight_decay=self.optim.weight_decay))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["recsys"] = self.description
        self._record_epoch_loss()
        checkpoint["epoch_losses"] = list(self.epoch_losses)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.epoch_losses = list(checkpoint.get("epoch_losses", []))


def _gathered(outputs: list) -> list:
    """Every worker's ``outputs``, concatenated (this process's alone when it trains by itself)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, outputs)
        return [o for rank in gathered for o in rank]
    return outputs


@dataclass
class Catalogue:
    """Every item's tower inputs (one row each) and, for an item's embedding row (its encoded id), its row here."""

    inputs: Batch
    row_of_id: torch.Tensor  # (the id table's rows,) int64, -1 for an id not in the catalogue

    @classmethod
    def of(cls, items: pl.DataFrame, spec: InputSpec, item_column: str, n_ids: int) -> Catalogue:
        """``n_ids``: the rows of the item id's embedding table (every encoded id is below it)."""
        ids = torch.from_numpy(items[item_column].to_numpy().astype(np.int64))
        row_of_id = torch.full((n_ids,), -1, dtype=torch.int64)
        row_of_id[ids] = torch.arange(len(ids))
        return cls(make_batch(items, spec), row_of_id)

    def rows(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.row_of_id[item_ids]


class StopWhenAsked(L.Callback):
    """Ends training cleanly once the file ``path`` exists: how a sweep stops a trial early while the run still writes
    its summary, checkpoint and W&B run. The workers agree every ``every`` steps, so all stop at the same step."""

    def __init__(self, path: str | Path, every: int = 4):
        self.path, self.every = Path(path), every

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx % self.every == 0 and trainer.strategy.reduce_boolean_decision(self.path.exists(), all=False):
            trainer.should_stop = True


class ProgressFile(L.Callback):
    """The run's progress for the driver's bar (`recsys.training.progress`), on rank 0: a JSON line at most every
    ``every_s`` seconds (the step), and one per epoch (its metrics)."""

    def __init__(self, path: str | Path, steps_per_epoch: int, every_s: float = 1.0):
        self.path, self.steps, self.every_s = Path(path), steps_per_epoch, every_s
        self._written = 0.0

    def _write(self, trainer: L.Trainer, **row) -> None:
        if trainer.global_rank != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        if now - self._written >= self.every_s:
            self._written = now
            loss = trainer.callback_metrics.get("train/loss_step")
            self._write(trainer, kind="step", epoch=trainer.current_epoch, step=batch_idx + 1,
                        steps=self.steps, epochs=trainer.max_epochs,
                        loss=None if loss is None else float(loss))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith(("val/", "train/loss_epoch")) and v.numel() == 1}
        self._write(trainer, kind="epoch", epoch=trainer.current_epoch, epochs=trainer.max_epochs, metrics=metrics)


class KeepCheckpoints(L.Callback):
    """In-process training (Ray Train's local mode, which stores no checkpoint): each epoch's checkpoint in
    ``<run>/checkpoint_epoch-<n>/checkpoint.ckpt``, the newest ``keep`` of them, as Ray Train keeps them."""

    PREFIX = "checkpoint_epoch-"
    METRICS = "metrics.json"  # beside each checkpoint: its epoch's metrics, as Ray Train reports them

    def __init__(self, run_dir: str | Path, name: str, keep: int, report_to: list | None = None):
        """``report_to``: Ray Train callbacks (e.g. Tune's) that get each epoch's metrics, as Ray Train's controller
        would give them."""
        self.run_dir, self.name, self.keep, self.report_to = Path(run_dir), name, keep, report_to or []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import shutil

        folder = self.run_dir / f"{self.PREFIX}{trainer.current_epoch:03d}"
        trainer.save_checkpoint(str(folder / self.name))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        metrics |= {"epoch": trainer.current_epoch, "step": trainer.global_step}
        written = folder / f"{self.METRICS}.partial"
        written.write_text(json.dumps(metrics))
        written.replace(folder / self.METRICS)  # (atomic: the checkpoint counts as saved from here on)
        for old in self.saved(self.run_dir)[: -self.keep or None]:
            shutil.rmtree(old.parent, ignore_errors=True)
        for callback in self.report_to:
            callback.after_report(None, [metrics], None)

    @classmethod
    def reported(cls, run_dir: str | Path) -> list[tuple[Path, dict]]:
        """(checkpoint, the metrics of its epoch) of the kept checkpoints, oldest first."""
        return [(path, json.loads((path.parent / cls.METRICS).read_text())) for path in cls.saved(run_dir)]

    @classmethod
    def saved(cls, run_dir: str | Path) -> list[Path]:
        """The kept checkpoints, oldest first: those whose metrics were written, which happens once the checkpoint
        is complete (a process killed while saving leaves one without, which a resume must not read)."""
        found = (folder / "checkpoint.ckpt" for folder in Path(run_dir).glob(f"{cls.PREFIX}*"))
        return sorted(path for path in found if path.exists() and (path.parent / cls.METRICS).is_file())
