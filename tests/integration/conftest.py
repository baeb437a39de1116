"""Trained runs shared by the integration tests: one local Ray cluster, the tiny DLRM and two-tower runs."""

import os

import pytest
import ray

from recsys.config import load_config
from recsys.deploy.server import free_port
from recsys.training.config import TrainConfig
from recsys.training.job import run
from serving.launch import direct_ingress_env
from tests.conftest import ROOT

TINY_TRAIN = ROOT / "configs" / "train" / "tiny.yaml"


@pytest.fixture(scope="session")
def local_ray():
    """The cluster is started as `recsys serve` starts one: Ray Serve's throughput-optimized mode, the serving
    app's ingress replica on a port of its own (`serving.launch`, read by the app fixture)."""
    started = not ray.is_initialized()
    if started:
        os.environ.update(direct_ingress_env(free_port()))
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def tiny_train_config(dataset, output, **overrides) -> TrainConfig:
    sets = [f"dataset={dataset.path}", f"output={output}"] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config(TrainConfig, TINY_TRAIN, sets)


@pytest.fixture(scope="session")
def dlrm_run(local_ray, tiny_dataset, tmp_path_factory):
    return run("dlrm", tiny_train_config(tiny_dataset, tmp_path_factory.mktemp("train")))


@pytest.fixture(scope="session")
def two_tower_run(local_ray, tiny_dataset, tmp_path_factory):
    return run("two-tower", tiny_train_config(tiny_dataset, tmp_path_factory.mktemp("train"), batch_size=128))
