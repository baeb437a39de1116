"""Distributed training as a user runs it: a real local Ray cluster, 2 gloo workers, TorchRec sharding."""

import json
import math
from pathlib import Path

import pytest
import ray

from recsys.config import load_config
from recsys.errors import RecsysError
from recsys.models.inputs import InputSpec
from recsys.training.config import TrainConfig
from recsys.training.job import run
from tests.conftest import ROOT
from tests.wandb_records import logged_keys

pytestmark = pytest.mark.integration
TINY = ROOT / "configs" / "train" / "tiny.yaml"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _cfg(tiny_dataset, tmp_path, **overrides):
    sets = [f"dataset={tiny_dataset.path}", f"output={tmp_path}"] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config(TrainConfig, TINY, sets)


def test_dlrm_trains_on_two_workers_with_sharded_tables(local_ray, tiny_dataset, schema, tmp_path):
    result = run("dlrm", _cfg(tiny_dataset, tmp_path))
    assert len(result.epoch_losses) == 3 and all(math.isfinite(x) for x in result.epoch_losses)
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert 0.55 < result.metrics["val/auc"] < 1 and 0.5 < result.metrics["test/auc"] < 1
    assert {"popularity_auc", "oracle_auc"} <= set(result.baselines)  # compared on the same test split
    tables = {t.name for t in InputSpec.for_part(schema, "dlrm").embedding_tables(
        tiny_dataset.manifest.cardinalities, 8)}
    assert {name.rsplit(".", 1)[-1] for name in result.sharding} == tables
    assert set(result.sharding.values()) <= {"table_wise", "column_wise", "row_wise", "data_parallel",
                                             "table_column_wise", "table_row_wise"}
    summary = json.loads((Path(result.path) / "metrics.json").read_text())
    assert summary["workers"] == 2 and summary["dataset_id"] == tiny_dataset.id
    # the W&B run (offline, inside the run folder) holds the lineage, the curves and the plan
    keys = logged_keys(next(Path(result.path).glob("wandb/offline-run-*/run-*.wandb")))
    assert {"task", "config", "schema_hash", "dataset_id", "dataset_path", "code_version"} <= keys["config"]
    assert {"train/loss_step", "train/loss_epoch", "train/examples_per_s", "train/lr_dense_0", "val/auc",
            "val/logloss"} <= keys["history"]
    assert {"sharding", "epoch_losses"} <= keys["summary"]


def test_two_tower_trains_on_two_workers(local_ray, tiny_dataset, tmp_path):
    result = run("two-tower", _cfg(tiny_dataset, tmp_path, batch_size=128))
    assert all(math.isfinite(x) for x in result.epoch_losses)
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert any(name.startswith("user_tower.") for name in result.sharding)
    assert any(name.startswith("item_tower.") for name in result.sharding)


def test_workers_that_cannot_share_the_shards_are_refused(tiny_dataset, tmp_path):
    with pytest.raises(RecsysError, match="2 shards per split, which 3 workers cannot share evenly"):
        run("dlrm", _cfg(tiny_dataset, tmp_path, workers=3))
