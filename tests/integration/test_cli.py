"""The `recsys data` commands as a user runs them: the installed console script, in a fresh folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY

pytestmark = pytest.mark.integration
RECSYS = str(Path(sys.executable).with_name("recsys"))


def run(cwd, *args, ok=True):
    proc = subprocess.run([RECSYS, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_explains_every_step(tmp_path):
    assert "data" in run(tmp_path, "--help").stdout
    for step, words in {"generate": "--out", "validate": "--reference", "build": "--force", "show": "--json"}.items():
        out = run(tmp_path, "data", step, "--help").stdout
        assert words in out and "--" in out


def test_generate_validate_build_show(tmp_path):
    cfg = ["--config", str(TINY), "--quiet"]
    gen = run(tmp_path, "data", "generate", *cfg).stdout
    assert "XYZShopSmart export written to runs/data/raw/xyzshop" in gen and "click-through rate" in gen
    val = run(tmp_path, "data", "validate", *cfg).stdout
    assert "0 quarantined" in val and "report.json written to runs/data/validated/xyzshop" in val
    build = run(tmp_path, "data", "build", *cfg).stdout
    ds_id = build.strip().splitlines()[-1].split()[1]
    assert ds_id.startswith("ds-") and (tmp_path / "runs" / "datasets" / ds_id / "manifest.json").is_file()
    assert "ranking" in build and "retrieval" in build and "embedding tables" in build
    assert "already built" in run(tmp_path, "data", "build", *cfg).stdout
    assert ds_id in run(tmp_path, "data", "show").stdout
    manifest = json.loads(run(tmp_path, "data", "show", ds_id, "--json").stdout)
    assert manifest["dataset_id"] == ds_id
    # the next batch can be checked against this dataset's statistics
    again = run(tmp_path, "data", "validate", *cfg, "--out", "runs/next",
                "--reference", f"runs/datasets/{ds_id}/manifest.json").stdout
    assert "all within bounds" in again


def test_bad_input_is_one_clear_line(tmp_path):
    proc = run(tmp_path, "data", "build", "--validated", "nowhere", ok=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert proc.stderr.startswith("error: nowhere is not a validated export")
    proc = run(tmp_path, "data", "generate", "--config", str(TINY), "--set", "generator.n_users=many", ok=False)
    assert proc.returncode == 2 and "generator.n_users: expected an integer, got 'many'" in proc.stderr
    proc = run(tmp_path, "data", "show", "ds-nothing", ok=False)
    assert proc.returncode == 2 and "no dataset 'ds-nothing'" in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing half-written
