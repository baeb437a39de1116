"""Shared fixtures: a tiny generated shop, validated and built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recsys.config import DataConfig, load_config
from recsys.data.dataset import Dataset, build_dataset
from recsys.data.generate import generate
from recsys.data.validate import validate
from recsys.schema import FeatureSchema, load_schema

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "data" / "tiny.yaml"

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("WANDB_MODE", "offline")  # tests never talk to a W&B server


@pytest.fixture(scope="session", autouse=True)
def mlflow_store(tmp_path_factory) -> str:
    """Every test's model registry is a SQLite file in a temp folder, never runs/registry (MLFLOW_TRACKING_URI)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture(scope="session")
def tiny_cfg() -> DataConfig:
    return load_config(DataConfig, TINY)


@pytest.fixture(scope="session")
def schema() -> FeatureSchema:
    return load_schema()


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory, tiny_cfg) -> Path:
    out = tmp_path_factory.mktemp("raw") / "shop"
    generate(tiny_cfg.generator, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_validated(tmp_path_factory, tiny_raw, tiny_cfg) -> Path:
    out = tmp_path_factory.mktemp("validated") / "shop"
    validate(tiny_raw, out, tiny_cfg.validation, tiny_cfg.ingest)
    return out


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_validated, tiny_cfg, schema) -> Dataset:
    ds, _ = build_dataset(tiny_validated, tmp_path_factory.mktemp("datasets"), schema, tiny_cfg.build,
                          progress=False)
    return ds
