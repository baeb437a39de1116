"""The model registry on real trained runs: `recsys export` registers, lineage points at real files, and the
gate re-evaluates real checkpoints when two versions were tested on different datasets."""

import json
import shutil
from pathlib import Path

import pytest

from recsys.cli import main
from recsys.registry import GateRefused, evaluate_checkpoint, get_version, list_versions, promote

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'registry' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_export_registers_the_dlrm_with_its_lineage_and_triton_version(dlrm_run, tmp_path, store, capsys):
    out, repo = tmp_path / "export", tmp_path / "triton"
    assert main(["export", dlrm_run.path, "--out", str(out), "--repository", str(repo)]) == 0
    printed = capsys.readouterr().out
    assert f"registered dlrm version 1 in {store}" in printed
    v = get_version("dlrm", 1)
    tags = v.tags
    assert tags["training_run"] == Path(dlrm_run.path).name and tags["training_run_path"] == dlrm_run.path
    assert tags["checkpoint"] == dlrm_run.checkpoint and tags["dataset_id"] == dlrm_run.dataset_id
    assert Path(tags["wandb_run"]).is_dir() and Path(tags["dataset_path"], "manifest.json").is_file()
    assert v.metrics["test/auc"] == pytest.approx(dlrm_run.metrics["test/auc"]) and v.parity_passed
    assert json.loads(tags["training_config"])["dataset"] == tags["dataset_path"]
    assert Path(tags["artifact.dlrm"], "model.onnx").is_file() and v.source == str(out.resolve())
    assert tags["triton_repository.dlrm"] == str(repo.resolve()) and tags["triton_version.dlrm"] == "1"
    assert (repo / "dlrm" / "1" / "model.onnx").is_file()


def test_two_tower_export_without_registering_then_registered_by_hand(two_tower_run, tmp_path, store, capsys):
    out = tmp_path / "export"
    assert main(["export", two_tower_run.path, "--out", str(out), "--no-register"]) == 0
    assert "registered" not in capsys.readouterr().out and list_versions("two-tower") == []
    assert main(["models", "register", str(out)]) == 0
    assert "registered two-tower version 1" in capsys.readouterr().out
    v = get_version("two-tower", 1)
    assert v.metrics["test/recall@100"] == pytest.approx(two_tower_run.metrics["test/recall@100"])
    assert Path(v.tags["item_index"], "embeddings.npy").is_file()
    assert Path(v.tags["artifact.query_tower"], "model.onnx").is_file()


def test_evaluate_checkpoint_scores_the_whole_test_split(dlrm_run, tiny_dataset):
    metrics = evaluate_checkpoint(dlrm_run.checkpoint, tiny_dataset.path)
    rows = tiny_dataset.read("ranking", "test").height
    assert metrics["test/rows"] == rows and metrics["test/logloss"] > 0.0
    # training scored the test rows its workers could split evenly; the whole split scores about the same
    assert metrics["test/auc"] == pytest.approx(dlrm_run.metrics["test/auc"], abs=0.03)


def _copy_run(run_path: str, export: Path, dest: Path, **changes) -> Path:
    """A copy of a run and its export whose recorded metrics or dataset id are changed (same weights)."""
    run = Path(shutil.copytree(run_path, dest / Path(run_path).name))
    summary = json.loads((run / "metrics.json").read_text())
    summary["metrics"] |= changes.get("metrics", {})
    (run / "metrics.json").write_text(json.dumps(summary))
    info = json.loads((export / "export.json").read_text())
    checkpoint = run / Path(info["checkpoint"]).relative_to(run_path)
    info["checkpoint"] = str(checkpoint)
    info["lineage"]["dataset_id"] = changes.get("dataset_id", info["lineage"]["dataset_id"])
    copied = Path(shutil.copytree(export, dest / "export"))
    (copied / "export.json").write_text(json.dumps(info))
    return copied


def test_the_gate_on_real_runs_refuses_worse_and_re_evaluates_across_datasets(dlrm_run, tmp_path, store):
    out = tmp_path / "export"
    assert main(["export", dlrm_run.path, "--out", str(out)]) == 0
    promote("dlrm", 1, "production")
    auc = dlrm_run.metrics["test/auc"]
    worse = _copy_run(dlrm_run.path, out, tmp_path / "worse", metrics={"test/auc": auc - 0.01})
    assert main(["models", "register", str(worse)]) == 0
    with pytest.raises(GateRefused, match=rf"test/auc {auc - 0.01:.4f} does not beat production v1's {auc:.4f}"):
        promote("dlrm", 2, "production")
    # the same weights, registered as if tested on another dataset: both are re-evaluated on its test split
    other = _copy_run(dlrm_run.path, out, tmp_path / "other", dataset_id="ds-elsewhere")
    assert main(["models", "register", str(other)]) == 0
    with pytest.raises(GateRefused, match=r"does not beat production v1's .* on dataset ds-elsewhere "
                                          r"\(re-evaluated \(production was evaluated on ds-"):
        promote("dlrm", 3, "production")
    event = promote("dlrm", 3, "production", force_reason="same weights, checking the override")
    assert event.comparison["candidate"] == event.comparison["production"]  # identical weights, identical AUC
    assert event.comparison["source"].startswith("re-evaluated")
