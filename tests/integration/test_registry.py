"""The model registry on real trained runs: `recsys export` registers, lineage points at real files, and the
gate re-evaluates real checkpoints when two versions were tested on different datasets."""

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from recsys.cli import main
from recsys.data.features import META_ITEM
from recsys.evaluation.retrieval import KS, RetrievalTask, evaluate, retrieval_task, two_tower_scorer
from recsys.models.inputs import make_batch
from recsys.registry import GateRefused, evaluate_checkpoint, get_version, list_versions, promote
from recsys.training.checkpoint import load_model
from recsys.training.job import run
from tests.integration.conftest import tiny_train_config
from tests.unit.registry.conftest import grown_dataset_of

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
                                          r"\(re-evaluated: both on dataset ds-elsewhere's test events, each with "
                                          r"its own dataset's encoders \(production v1 was trained on ds-"):
        promote("dlrm", 3, "production")
    event = promote("dlrm", 3, "production", force_reason="same weights, checking the override")
    assert event.comparison["candidate"] == event.comparison["production"]  # identical weights, identical AUC
    assert event.comparison["source"].startswith("re-evaluated")


# ---- two datasets of one shop whose encoders differ -------------------------------------------------------------
@pytest.fixture(scope="module")
def grown_dataset(tiny_raw, tiny_cfg, schema, tmp_path_factory):
    """The tiny shop with 600 more users and 400 more items, none with events (`grow_shop`): the same test
    events as ``tiny_dataset``, but reordered country / device / category / brand vocabularies, other price
    buckets and a longer catalogue."""
    return grown_dataset_of(tiny_raw, tmp_path_factory.mktemp("grown"), tiny_cfg, schema)


def _own_test_scores(checkpoint: str, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the checkpoint's click probabilities on every test row of the dataset it was trained on, scored
    in one batch from that dataset's own shards."""
    model, _ = load_model(checkpoint)
    rows = dataset.read("ranking", "test")
    with torch.no_grad():
        scores = torch.sigmoid(model(make_batch(rows, model.spec))).numpy().reshape(-1)
    return rows[model.spec.label.name].to_numpy(), scores


def test_production_re_evaluated_on_another_datasets_test_events_scores_them_as_on_its_own(
        dlrm_run, tiny_dataset, grown_dataset):
    labels, scores = _own_test_scores(dlrm_run.checkpoint, tiny_dataset)
    metrics = evaluate_checkpoint(dlrm_run.checkpoint, grown_dataset.path)
    # the grown shop's test events are the tiny shop's: read with the tiny shop's encoders, the same scores
    assert metrics["test/auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9), (
        f"production re-evaluated on {grown_dataset.id}: AUC {metrics['test/auc']:.6f}, on its own test rows "
        f"{roc_auc_score(labels, scores):.6f}")
    assert metrics["test/logloss"] == pytest.approx(log_loss(labels, scores), abs=1e-6)
    assert metrics["test/rows"] == len(labels) == grown_dataset.manifest.splits["ranking"]["test"]["rows"]
    # and so it reproduces the test AUC its training run recorded
    assert metrics["test/auc"] == pytest.approx(dlrm_run.metrics["test/auc"], abs=1e-9)


def test_a_two_tower_re_evaluated_on_another_dataset_meets_its_new_items_as_unknown(two_tower_run, tiny_dataset,
                                                                                    grown_dataset):
    model, _ = load_model(two_tower_run.checkpoint)
    metrics = evaluate_checkpoint(two_tower_run.checkpoint, grown_dataset.path)
    # the expected task, built without the re-encoding: the tiny dataset's own users, items and relevant sets
    # (the events are the same), plus the new items encoded by hand with the tiny dataset's encoders
    own = retrieval_task(tiny_dataset)
    fitted = json.loads((tiny_dataset.path / "encoders.json").read_text())["fitted"]
    validated = Path(grown_dataset.manifest.sources["validated"]["items"]["path"])
    new = pl.read_parquet(validated).filter(~pl.col("item_id").is_in(own.items[META_ITEM].implode())).sort("item_id")
    by_hand = {META_ITEM: new["item_id"].to_list(),
               "item_id": [0] * new.height,  # not in its catalogue: unknown
               "item_category": [fitted["item_category"]["vocab"].index(c) + 1 for c in new["category"]],
               "item_brand": [fitted["item_brand"]["vocab"].index(b) + 1 for b in new["brand"]],
               "item_price_bucket": (np.searchsorted(fitted["item_price_bucket"]["boundaries"], new["price"].to_numpy(),
                                                     side="right") + 1).tolist(),
               "item_views_7d": [0.0] * new.height}  # log1p of no views
    assert set(model.item_spec.columns) == set(by_hand) - {META_ITEM}, "the item tower's inputs changed"
    columns = list(by_hand)
    items = pl.concat([own.items.select(columns),
                       pl.DataFrame(by_hand).select(pl.col(c).cast(own.items.schema[c]) for c in columns)])
    task = RetrievalTask(users=own.users, items=items, relevant=own.relevant, exclude=own.exclude)
    expected = evaluate(task, two_tower_scorer(model, task))
    assert metrics["test/retrieval_users"] == own.users.height
    for k in KS:
        assert metrics[f"test/recall@{k}"] == pytest.approx(expected[f"recall@{k}"], abs=1e-12), k
        assert metrics[f"test/ndcg@{k}"] == pytest.approx(expected[f"ndcg@{k}"], abs=1e-12), k


def test_the_gate_compares_models_of_two_datasets_on_the_candidates_test_events(local_ray, dlrm_run, tiny_dataset,
                                                                                 grown_dataset, tmp_path, store):
    candidate = run("dlrm", tiny_train_config(grown_dataset, tmp_path / "train", epochs=1, workers=0))  # in-process
    # one epoch on the tiny shop leaves it under logistic regression on validation: not registered, nor served
    assert candidate.metrics["val/auc"] <= candidate.baselines["logistic_val_auc"], "the premise of the refusal"
    repository = tmp_path / "repository"
    repository.mkdir()
    assert main(["export", candidate.path, "--out", str(tmp_path / "refused"), "--repository", str(repository)]) == 2
    assert not any(repository.iterdir()) and (tmp_path / "refused" / "export.json").is_file()
    assert list_versions("dlrm") == []
    for trained, out in ((dlrm_run, "production"), (candidate, "candidate")):  # (tiny models, under the floor)
        assert main(["export", trained.path, "--out", str(tmp_path / out),
                     "--allow-below-floor", "under test: the comparison across datasets, not the models"]) == 0
    assert [get_version("dlrm", v).tags["dataset_id"] for v in (1, 2)] == [tiny_dataset.id, grown_dataset.id]
    promote("dlrm", 1, "production")
    event = promote("dlrm", 2, "production", force_reason="the comparison is under test, not the verdict")
    compared = event.comparison
    labels, scores = _own_test_scores(dlrm_run.checkpoint, tiny_dataset)
    assert compared["production"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9), (
        f"production's re-evaluated AUC {compared['production']:.6f}, on its own test rows "
        f"{roc_auc_score(labels, scores):.6f}")
    assert compared["candidate"] == pytest.approx(candidate.metrics["test/auc"], abs=1e-9)  # its own test set
    rows = grown_dataset.manifest.splits["ranking"]["test"]["rows"]
    assert compared["rows"] == {"candidate": rows, "production": rows}
    assert compared["source"] == (f"re-evaluated: both on dataset {grown_dataset.id}'s test events, each with its "
                                  f"own dataset's encoders (production v1 was trained on {tiny_dataset.id})")
    assert compared["source"] in next(c["detail"] for c in event.checks if c["name"] == "metric")
