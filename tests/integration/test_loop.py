"""The whole MLOps loop on real components, at small scale: a shop whose users' tastes shift, the live app
(Ray Serve + Triton) serving models trained before the shift, simulated shoppers clicking on what they truly like,
the monitor raising the CTR alert, ``recsys loop`` (a separate process, killed once mid-training and restarted)
retraining on the shop's new export plus the app's feedback, canarying the new ranker and promoting it, and the
live CTR recovering (`recsys.retrain.scenario`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import ray

from recsys.config import DataConfig, load_config
from recsys.data.generate import ShopWorld
from recsys.deploy import rollout, server
from recsys.deploy.ports import free_port
from recsys.online.features import OnlineFeatures
from recsys.registry import list_versions
from recsys.retrain.scenario import (
    RETRAINING_RULES,
    DriftScenario,
    monitor_factory,
    plot_timeline,
    prepare,
    shop_config,
    write_loop_config,
)
from recsys.retrain.simulate import Shoppers
from recsys.serving_config import ServingConfig
from recsys.training.job import run
from serving.launch import run_app
from tests.conftest import ROOT
from tests.integration.conftest import TINY_TRAIN, tiny_train_config

pytestmark = pytest.mark.integration

RECSYS = str(Path(sys.executable).with_name("recsys"))


@pytest.fixture(scope="module")
def stage(local_ray, schema, tmp_path_factory):
    """Production trained on the export as of the shift day; Triton and the app serving it; the loop's config."""
    work = tmp_path_factory.mktemp("loop")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")  # a registry of its own
        # the tiny shop, 30 days up to today, tastes shifting on day 16; taste weighs more in its click model than
        # in the default shop's (a well-matched list is clicked twice as often as the most popular items), so
        # that the tiny models learn it in seconds
        data = shop_config(ROOT / "configs" / "data" / "tiny.yaml", work / "data.yaml", days=30,
                           target_events=75000, n_users=300, n_items=200, affinity_scale=4.0,
                           drift={"start_day": 16, "strength": 0.9})
        # trained in this process (Ray Train's local mode), and the loop trains in its own: what is tested here is
        # the loop (tests/integration/test_train.py trains on Ray Train's workers)
        overrides = {"dlrm": {"workers": 0}, "two-tower": {"batch_size": 128, "workers": 0}}
        stage = prepare(work, data, lambda task, ds: run(task, tiny_train_config(
            ds, work / "train", name=f"before-{task}", **overrides[task])), before_events=40000)
        config = ServingConfig(dataset=str(stage.dataset.path), retrieval_export=str(work / "two-tower"),
                               triton_url=stage.triton.grpc_url, event_log=str(work / "events"),
                               port=free_port(), rollout_file=str(stage.rollout_file), rollout_poll_s=0.2,
                               rank_deadline_s=5.0, retrieve_deadline_s=10.0, candidates=150)
        loop_config = write_loop_config(stage, config.event_log, TINY_TRAIN, train_overrides=("workers=0",), canary={
            "share": 0.5, "min_impressions": 3000, "alpha": 0.05, "max_wait_minutes": 40, "poll_s": 1.0,
            "grace_s": 0.5})
        running = run_app(config, "127.0.0.1", proxy_port=free_port(), run_dir=work / "run")
        try:
            yield {"stage": stage, "url": running.url, "config": config, "loop_config": loop_config,
                   "data": load_config(DataConfig, data)}
        finally:
            running.stop()
            server.stop(work / "triton")


def test_drift_alert_retrain_canary_promote_and_ctr_recovers(stage, schema):
    st, config = stage["stage"], stage["config"]
    work = st.work
    known = set(OnlineFeatures(st.dataset, schema).users["_user"].to_list())
    monitor = monitor_factory(st, config.event_log, ROOT / "configs" / "monitoring" / "alerts.yaml", window_s=3600,
                              min_impressions=150, schema=schema)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    logs: list[Path] = []

    def start_loop() -> subprocess.Popen:
        logs.append(work / f"loop-{len(logs)}.log")
        return subprocess.Popen([RECSYS, "loop", "run", "--config", str(stage["loop_config"])], env=env,
                                stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT, start_new_session=True)

    state_file = work / "loop" / "state.json"
    crash = {}

    def kill_once_after_the_ranker_trained(proc: subprocess.Popen, tick) -> subprocess.Popen:
        """A crash in the middle: SIGKILL the loop once the DLRM has trained, then start it again."""
        if crash or not state_file.is_file():
            return proc
        steps = (json.loads(state_file.read_text())["current"] or {}).get("steps", {})
        if "train.dlrm" not in steps:
            return proc
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        metrics = Path(steps["train.dlrm"]["run"]) / "metrics.json"
        crash.update(dlrm=steps["train.dlrm"], mtime=metrics.stat().st_mtime)
        return start_loop()

    with httpx.Client(base_url=stage["url"], trust_env=False, timeout=60.0) as client:
        shoppers = Shoppers(ShopWorld(stage["data"].generator), client, seed=3, known_users=known)
        scenario = DriftScenario(shoppers, monitor, work / "retrain.jsonl", visits_per_tick=40, baseline_ticks=8,
                                 min_drift_ticks=8, after_ticks=10, loop_pause_s=0.3)
        scenario.run(start_loop, kill_once_after_the_ranker_trained, loop_timeout_s=3600)
        answer = client.post("/recommend", json={"user_id": next(iter(known)), "k": 5}).json()
    scenario.add_loop_moments(state_file)
    plot = plot_timeline(scenario, work / "timeline.png")
    scenario.save(work / "timeline.json")
    summary = scenario.summary()
    print(json.dumps(summary, indent=1))

    # no retraining alert on steady traffic (and the inputs did not drift); the CTR alert after the shift
    assert not [a for t in scenario.ticks if t.phase == "before" for a in t.alerts if a in RETRAINING_RULES]
    assert all(t.drift is None or t.drift < 0.2 for t in scenario.ticks if t.phase == "before")
    assert any(t.drift is not None for t in scenario.ticks if t.phase == "before")
    assert "production_ctr_drop" in [a for t in scenario.ticks if t.phase == "drift" for a in t.alerts]
    # the loop: killed once after training the ranker, resumed without training it again, and promoted
    assert crash, "the loop finished before the ranker's training was recorded: nothing was killed"
    resumed = logs[-1].read_text()
    assert "train.dlrm: done before" in resumed, resumed[-3000:]
    cycle = json.loads(state_file.read_text())["cycles"][-1]
    assert cycle["steps"]["train.dlrm"] == crash["dlrm"]
    assert (Path(crash["dlrm"]["run"]) / "metrics.json").stat().st_mtime == crash["mtime"]
    assert cycle["outcome"] == "promoted", cycle["detail"]
    assert cycle["steps"]["validate"]["feedback_sources"] == 1
    new = {task: int(cycle["steps"][f"register.{task}"]["version"]) for task in ("dlrm", "two-tower")}
    for task, version in new.items():
        production = [v for v in list_versions(task) if "production" in v.aliases]
        assert [v.version for v in production] == [version]
        assert production[0].tags["dataset_id"] == cycle["dataset"] != st.dataset.id
    served = rollout.read(config.rollout_file)
    assert served.candidate is None and served.registry["production"] == str(new["dlrm"])
    # the new ranker's inputs come from the dataset it was trained on (its own vocabularies and fresher features)
    assert answer["model_versions"]["dataset"] == cycle["dataset"], answer
    # the lists recover: after the promotion shoppers click more than under the shift, and what the generator's true
    # click model expects of the served lists (no coin flips: the test holds on any run) is measurably higher
    assert summary["after"]["ctr"] > summary["drift"]["ctr"], summary
    assert summary["after"]["expected_ctr"] > summary["drift"]["expected_ctr"], summary
    assert summary["expected_recovery"]["p_value"] < 0.001, summary
    assert plot.stat().st_size > 10_000
