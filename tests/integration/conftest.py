"""Trained runs shared by the integration tests: one local Ray cluster, the tiny DLRM and two-tower runs."""

import os
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import ray

from recsys.cli import main as recsys_main
from recsys.config import load_config
from recsys.data.features import META_USER
from recsys.deploy import server
from recsys.deploy.ports import free_port, free_port_block
from recsys.online.features import OnlineFeatures
from recsys.serving_config import ServingConfig
from recsys.training.config import TrainConfig
from recsys.training.job import run_together
from serving.launch import SPARE_PORTS, direct_ingress_env, direct_ingress_ports, healthy_ports, run_app
from tests.conftest import ROOT

TINY_TRAIN = ROOT / "configs" / "train" / "tiny.yaml"
INGRESS_REPLICAS = 2  # as `recsys serve` runs them: behind HAProxy


@pytest.fixture(scope="session")
def local_ray():
    """The cluster is started as `recsys serve` starts one: Ray Serve's throughput-optimized mode, the serving
    app's ingress replica on a port of its own (`serving.launch`, read by the app fixture)."""
    started = not ray.is_initialized()
    if started:
        ports = INGRESS_REPLICAS + SPARE_PORTS
        os.environ.update(direct_ingress_env(free_port_block(ports), ports))
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


def tiny_train_config(dataset, output, **overrides) -> TrainConfig:
    sets = [f"dataset={dataset.path}", f"output={output}"] + [f"{k}={v}" for k, v in overrides.items()]
    return load_config(TrainConfig, TINY_TRAIN, sets)


@pytest.fixture(scope="session")
def tiny_runs(local_ray, tiny_dataset, tmp_path_factory) -> dict:
    """Both tiny models trained on 2 Ray Train workers each, at the same time (as `recsys train both` trains); the
    two-tower with early stopping on its validation recall@100 (at most 3 epochs)."""
    return run_together({"dlrm": tiny_train_config(tiny_dataset, tmp_path_factory.mktemp("train")),
                         "two-tower": tiny_train_config(tiny_dataset, tmp_path_factory.mktemp("train"),
                                                        batch_size=128, patience=1)}, progress=False)


@pytest.fixture(scope="session")
def dlrm_run(tiny_runs):
    return tiny_runs["dlrm"]


@pytest.fixture(scope="session")
def two_tower_run(tiny_runs):
    return tiny_runs["two-tower"]


# ---- the serving app on the tiny runs (one for the session: a module that changes what it serves puts it back) --
@dataclass
class App:
    url: str
    config: ServingConfig
    triton: server.ServerInfo
    work: Path
    features: OnlineFeatures

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, trust_env=False, timeout=60.0)


@dataclass
class ServedModels:
    work: Path  # <task>/ exports, triton_models/, triton/ (the server's run folder)
    triton: server.ServerInfo
    retrieval_export: Path


@pytest.fixture(scope="session")
def served_models(dlrm_run, two_tower_run, tmp_path_factory):
    """The tiny runs exported, the ranker on a real Triton (shared by every app a test deploys)."""
    work = tmp_path_factory.mktemp("serving")
    repo = work / "triton_models"
    for trained in (dlrm_run, two_tower_run):
        assert recsys_main(["export", str(trained.path), "--out", str(work / trained.task),
                            "--repository", str(repo)]) == 0
    triton = server.start(repo, ["dlrm"], run_dir=work / "triton")
    try:
        yield ServedModels(work, triton, work / two_tower_run.task)
    finally:
        server.stop(work / "triton")


def serving_config(models: ServedModels, dataset, work: Path, **overrides) -> ServingConfig:
    """The tests' app config: generous deadlines (the shared 2-core machine is busy; the degraded test stops
    Triton instead), two ingress replicas behind HAProxy as `recsys serve` runs them."""
    assert direct_ingress_ports(), "the local_ray fixture starts the cluster with direct ingress, as `recsys serve`"
    return ServingConfig(**{
        "dataset": str(dataset.path), "retrieval_export": str(models.retrieval_export),
        "triton_url": models.triton.grpc_url, "event_log": str(work / "events"), "port": free_port(),
        "rollout_file": str(work / "rollout.json"), "rollout_poll_s": 0.2, "rank_deadline_s": 5.0,
        "retrieve_deadline_s": 10.0, "max_k": 50, "candidates": 100, "ingress_replicas": INGRESS_REPLICAS,
        **overrides})


@pytest.fixture(scope="session")
def app(local_ray, served_models, tiny_dataset, schema, tmp_path_factory):
    work = served_models.work
    config = serving_config(served_models, tiny_dataset, work)
    triton = served_models.triton
    running = run_app(config, "127.0.0.1", proxy_port=free_port(), run_dir=work / "run")
    try:
        assert running.url == f"http://127.0.0.1:{config.port}" and running.balancer is not None
        yield App(running.url, config, triton, work, OnlineFeatures(tiny_dataset, schema, config.popular_items))
    finally:
        running.stop()


@pytest.fixture(scope="module")
def http(app):
    with app.client() as client:
        yield client


def known_users(app: App, n: int = 5) -> list[int]:
    return app.features.users[META_USER].head(n).to_list()


def recommend(http: httpx.Client, **body) -> dict:
    r = http.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def settle(app: App) -> None:
    """Until every ingress replica follows the rollout file's current revision (each polls it on its own)."""
    from recsys.deploy import rollout

    wanted = rollout.revision(app.config.rollout_file)
    deadline = time.monotonic() + 60
    for port in healthy_ports(direct_ingress_ports()):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=30) as replica:
            while replica.get("/readyz").json()["rollout_revision"] != wanted:
                assert time.monotonic() < deadline, f"the replica on {port} does not follow revision {wanted}"
                time.sleep(0.1)
