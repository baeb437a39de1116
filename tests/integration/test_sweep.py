"""A Ray Tune sweep over the training job as a user runs it: a real local Ray, three trials one at a time, ASHA."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray

from recsys.training.sweep import sweep
from recsys.training.sweep_config import load_sweep
from tests.conftest import ROOT
from tests.wandb_records import run_info

pytestmark = pytest.mark.integration
TINY_SWEEP = ROOT / "configs" / "sweep" / "tiny.yaml"
RECSYS = str(Path(sys.executable).with_name("recsys"))


@pytest.fixture(scope="module")
def tiny_sweep(local_ray, tiny_dataset, tmp_path_factory):
    return sweep(load_sweep(TINY_SWEEP, [f"train.dataset={tiny_dataset.path}", "name=tiny",
                                         f"output={tmp_path_factory.mktemp('sweeps')}"]))


def test_every_trial_is_a_tracked_run_in_the_sweeps_wandb_group(tiny_sweep):
    assert [t["error"] for t in tiny_sweep.trials] == [None] * 3
    assert sorted(t["hyperparameters"]["optim.dense_lr"] for t in tiny_sweep.trials) == [1e-6, 1e-4, 3e-3]
    ids = set()
    for trial in tiny_sweep.trials:
        run_dir = Path(trial["path"])
        assert run_dir.parent == Path(tiny_sweep.path) and run_dir.name == trial["name"]
        assert (run_dir / "metrics.json").is_file()  # written by the run itself, also when stopped early
        [wandb_file] = run_dir.glob("wandb/offline-run-*/run-*.wandb")  # its own W&B run, in its run folder
        ids.add(wandb_file.stem)
        info = run_info(wandb_file)
        assert info["group"] == "tiny" and info["name"] == trial["name"] and info["finished"]
        assert info["config"]["hyperparameters"] == trial["hyperparameters"]
        assert info["config"]["config"]["optim"]["dense_lr"] == trial["hyperparameters"]["optim.dense_lr"]
    assert len(ids) == 3


def test_asha_stops_the_slow_learners_after_the_first_epoch(tiny_sweep):
    saved = json.loads((Path(tiny_sweep.path) / "sweep.json").read_text())
    assert saved["scheduler"]["kind"] == "ASHA" and saved["scheduler"]["grace_period"] == 1
    by_lr = {t["hyperparameters"]["optim.dense_lr"]: t for t in saved["trials"]}
    assert by_lr[3e-3]["epochs"] == 2 and not by_lr[3e-3]["stopped_early"]  # the first trial sets the bar
    assert by_lr[1e-6]["stopped_early"] and by_lr[1e-6]["epochs"] == 1  # worse than both before it at epoch 1
    for trial in saved["trials"]:
        assert trial["config"]["optim"]["dense_lr"] == trial["hyperparameters"]["optim.dense_lr"]
        summary = json.loads((Path(trial["path"]) / "metrics.json").read_text())
        if trial["stopped_early"]:  # stopped cleanly a few steps into its second epoch
            assert summary["stopped_early"]["after_epochs"] == trial["epochs"] == 1
            assert summary["stopped_early"]["metrics"]["val/loss"] == trial["metric"]
            assert (Path(trial["path"]) / "STOP").is_file() and Path(summary["checkpoint"]).is_dir()
        else:
            assert "stopped_early" not in summary and summary["epochs"] == trial["epochs"] == 2
            assert summary["metrics"]["val/loss"] == trial["metric"]
    assert not ray.util.placement_group_table() or all(  # every trial's workers gave their CPUs back
        pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())


def test_the_best_trial_has_the_best_metric_and_the_table_lists_it_first(tiny_sweep):
    saved = json.loads((Path(tiny_sweep.path) / "sweep.json").read_text())
    assert saved["metric"] == "val/loss" and saved["mode"] == "min"
    best = min(saved["trials"], key=lambda t: t["metric"])
    assert saved["best"] == best["name"] == tiny_sweep.best["name"] == tiny_sweep.trials[0]["name"]
    table = tiny_sweep.table().splitlines()
    assert "stopped early" in table[1] and "optim.dense_lr" in table[1]
    assert table[2].split()[:2] == [best["name"], f"{best['metric']:.4f}"]
    assert f"best: {best['name']}" in tiny_sweep.table()


def test_a_bad_search_space_key_is_one_clear_error(tmp_path):
    proc = subprocess.run([RECSYS, "tune", "--config", str(TINY_SWEEP), "--set", "space.optim.lr={uniform: [0.1, 1]}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: search space key 'optim.lr' is not a training-config field")
    assert "'optim.dense_lr'" in proc.stderr and "'dlrm.embedding_dim'" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing started, nothing written
    assert "loguniform" in subprocess.run([RECSYS, "tune", "--help"], capture_output=True, text=True).stdout
