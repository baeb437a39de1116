"""Lineage read from an export folder: every tag a registered version carries."""

import json

import pytest

from recsys.errors import RecsysError
from recsys.registry.lineage import export_lineage
from recsys.schema import load_schema
from tests.unit.registry.conftest import make_export


def test_dlrm_lineage_has_data_code_run_config_metrics_parity_and_artifacts(tmp_path):
    export = make_export(tmp_path, "run-a", metric=0.7539)
    repo = tmp_path / "triton"
    tags = export_lineage(export, {"dlrm": repo / "dlrm" / "3"})
    run = tmp_path / "run-a"
    assert tags["task"] == "dlrm" and tags["dataset_id"] == "ds-a" and tags["dataset_path"] == "/data/ds-a"
    assert tags["schema_hash"] == load_schema().hash and tags["code_version"] == "abc123"
    assert tags["training_run"] == "run-a" and tags["training_run_path"] == str(run.resolve())
    assert tags["wandb_run"].endswith("offline-run-20261127_150000-abcdef123456/files")
    assert json.loads(tags["training_config"])["dlrm"] == {"embedding_dim": 16}
    # val/* and test/* (no train/*)
    assert json.loads(tags["metrics"]) == {"val/auc": 0.7439, "test/auc": 0.7539, "test/logloss": 0.23}
    assert json.loads(tags["baselines"]) == {"popularity_auc": 0.69, "popularity_val_auc": 0.55,
                                             "logistic_val_auc": 0.60}
    assert json.loads(tags["parity"]) == {"dlrm": 1e-7} and float(tags["parity_tolerance"]) == 1e-5
    assert tags["parity_passed"] == "true"
    assert tags["export_dir"] == str(export.resolve()) and tags["artifact.dlrm"] == str((export / "dlrm").resolve())
    assert tags["checkpoint"] == str(run / "checkpoint_000" / "checkpoint.ckpt")
    assert tags["triton_repository.dlrm"] == str(repo.resolve()) and tags["triton_version.dlrm"] == "3"
    assert "item_index" not in tags


def test_two_tower_lineage_has_retrieval_metrics_and_the_item_index(tmp_path):
    export = make_export(tmp_path, "tt", task="two-tower", metric=0.55)
    tags = export_lineage(export)
    metrics = json.loads(tags["metrics"])
    assert metrics["test/recall@100"] == 0.55 and "test/ndcg@100" in metrics and "train/loss" not in metrics
    assert tags["item_index"] == str(export.resolve() / "items")
    assert tags["artifact.query_tower"].endswith("query_tower")
    assert json.loads(tags["parity"]) == {"query_tower": 1e-7, "item_embeddings": 0.0}
    assert not any(k.startswith("triton_") for k in tags)


def test_a_parity_diff_above_tolerance_is_recorded_as_failed(tmp_path):
    assert export_lineage(make_export(tmp_path, "bad", parity=3e-4))["parity_passed"] == "false"


def test_a_folder_without_export_json_is_refused_clearly(tmp_path):
    with pytest.raises(RecsysError, match=r"export\.json is missing: not an export folder"):
        export_lineage(tmp_path)
