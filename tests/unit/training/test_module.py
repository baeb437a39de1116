"""The Lightning loop, in one process, on the tiny dataset: both models train and are evaluated."""

from functools import partial

import numpy as np
import pytorch_lightning as L
import torch
from torch.utils.data import DataLoader

from recsys.models.config import DLRMConfig, TwoTowerConfig
from recsys.models.dlrm import DLRMTrain, Ranker
from recsys.models.two_tower import TwoTower, TwoTowerTrain
from recsys.training.config import OptimConfig
from recsys.training.data import (
    EpochBatches,
    item_log_q,
    ranking_batches,
    read_shard,
    retrieval_batches,
)
from recsys.training.module import RecsysModule


class LossHistory(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _fit(module, train, val, epochs):
    history = LossHistory()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[history])
    trainer.fit(module, DataLoader(train, batch_size=None), DataLoader(val, batch_size=None))
    return trainer, history.losses


def test_ranking_trains_and_beats_chance(tiny_dataset, schema):
    torch.manual_seed(0)
    model = Ranker(schema, tiny_dataset.manifest.cardinalities, DLRMConfig())
    cols = model.spec.columns
    frames = {s: read_shard(tiny_dataset, "ranking", s, 0, cols) for s in ("train", "val")}
    train = EpochBatches(lambda seed, skip: ranking_batches(frames["train"], model.spec, 256, seed, skip), shuffle=True)
    val = EpochBatches(lambda seed, skip: ranking_batches(frames["val"], model.spec, 1024), shuffle=False)
    trainer, losses = _fit(RecsysModule(DLRMTrain(model), OptimConfig(dense_lr=3e-3)), train, val, epochs=4)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    metrics = trainer.callback_metrics
    assert 0.55 < float(metrics["val/auc"]) <= 1 and np.isfinite(float(metrics["val/logloss"]))


def test_retrieval_trains_with_in_batch_negatives(tiny_dataset, schema):
    torch.manual_seed(0)
    cfg = TwoTowerConfig(embedding_dim=16, output_dim=32)
    model = TwoTower(schema, tiny_dataset.manifest.cardinalities, cfg)
    cols = list(dict.fromkeys([*model.user_spec.columns, *model.item_spec.columns]))
    log_q = item_log_q(tiny_dataset, schema)
    make = partial(retrieval_batches, user_spec=model.user_spec, item_spec=model.item_spec,
                   item_column=schema.item_id.name, log_q=log_q, batch_size=128)
    train_frame = read_shard(tiny_dataset, "retrieval", "train", 0, cols)
    val_frame = read_shard(tiny_dataset, "retrieval", "val", 0, cols)
    train = EpochBatches(lambda seed, skip: make(train_frame, shuffle_seed=seed, skip=skip), shuffle=True)
    val = EpochBatches(lambda seed, skip: make(val_frame, shuffle_seed=seed), shuffle=False)
    module = RecsysModule(TwoTowerTrain(model, cfg), OptimConfig(dense_lr=3e-3))
    _, losses = _fit(module, train, val, epochs=4)
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < np.mean(losses[:3])
    # embeddings were trained by the fused in-backward optimiser, not by Adam
    adam_params = {id(p) for g in module.configure_optimizers().param_groups for p in g["params"]}
    assert not adam_params & {id(p) for p in model.user_tower.ebc.parameters()}
