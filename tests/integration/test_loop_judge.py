"""The retraining loop's last steps against a real registry, a real tritonserver and a real rollout file (tiny ONNX
rankers stand in for trained DLRMs: what is tested is where traffic and aliases end up, not which model is better).

* The promotion is all or nothing: when the DLRM passes the gate and the two-tower does not, the DLRM's production
  alias goes back, the candidates are withdrawn and all traffic is production's again.
* The judge sees a replica's automatic rollback: the cycle ends with the replica's reason (not after waiting out
  its timeout), and the candidate alias is withdrawn, so a later ``recsys models deploy`` does not bring it back.
"""

from __future__ import annotations

import json

import pytest

from recsys.deploy import rollout, server, triton_control
from recsys.deploy.registry_state import state_from_registry
from recsys.registry import GateRefused, history, promote, register
from recsys.registry.aliases import current
from recsys.retrain.config import CanaryConfig, GateConfig, LoopConfig
from recsys.retrain.loop import Loop
from recsys.schema import load_schema
from serving.canary import Canary
from tests.tiny_onnx import export_tiny_ranker
from tests.unit.registry.conftest import make_export

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """dlrm and two-tower v1 in production (recorded test metrics on the same dataset), v2 of each registered,
    Triton serving dlrm v1 through the rollout file."""
    work = tmp_path_factory.mktemp("judge")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
        schema_hash = load_schema().hash
        versions = {}
        for task, metrics in (("dlrm", (0.75, 0.80)), ("two-tower", (0.50, 0.40))):  # v2 two-tower: worse
            for n, metric in enumerate(metrics, start=1):
                export = make_export(work / "runs", f"{task}-v{n}", task=task, metric=metric)
                if task == "dlrm":
                    export_tiny_ranker(export / "dlrm", name="dlrm", schema_hash=schema_hash, seed=n)
                versions[task, n] = register(export).version
        for task in ("dlrm", "two-tower"):
            promote(task, versions[task, 1], "production", reason="before the test")
        (work / "triton_models").mkdir()
        triton = server.start(work / "triton_models", [], run_dir=work / "triton")
        try:
            state = state_from_registry(triton, 0.0)
            triton_control.apply(work / "rollout.json", state, "test: production", expect_revision=0, info=triton)
            yield {"work": work, "triton": triton, "versions": versions}
        finally:
            server.stop(work / "triton")


def loop_at_canary(world, name: str, max_wait_minutes: float = 30.0) -> Loop:
    """A loop whose cycle registered both v2s and has just started their canary (the steps before are recorded)."""
    w = world["work"]
    cfg = LoopConfig(work_dir=str(w / name), trigger_file=str(w / name / "retrain.jsonl"),
                     event_log=str(w / name / "events"), rollout_file=str(w / "rollout.json"),
                     triton_run_dir=str(w / "triton"),
                     canary=CanaryConfig(share=0.5, min_impressions=100, max_wait_minutes=max_wait_minutes,
                                         poll_s=0.2, grace_s=0.1))
    loop = Loop(cfg, echo=lambda _: None)
    loop.start("test")
    for task in ("dlrm", "two-tower"):
        loop.state.finish_step(f"register.{task}", {"version": world["versions"][task, 2]})
    loop._step("candidate", loop._candidate)
    loop._step("canary", loop._canary)
    served = rollout.read(cfg.rollout_file)
    assert served.candidate is not None and served.candidate_share == 0.5
    return loop


def test_a_promotion_the_gate_refuses_for_one_model_moves_nothing(world):
    loop = loop_at_canary(world, "refused")
    before = {task: current(task, "production") for task in ("dlrm", "two-tower")}
    verdict = loop._promote("candidate CTR 0.12 vs production 0.08")  # the canary won; the two-tower's gate says no
    assert verdict["outcome"] == "refused" and "two-tower" in verdict["summary"], verdict
    assert verdict["undone"] == ["dlrm"]
    for task in ("dlrm", "two-tower"):
        assert current(task, "production") == before[task]  # the DLRM's move was undone
        assert current(task, "candidate") is None  # and the candidates withdrawn
    moves = [(e.alias, e.action, e.to_version) for e in history("dlrm")][-3:]
    assert moves == [("production", "promote", world["versions"]["dlrm", 2]),
                     ("production", "undo", world["versions"]["dlrm", 1]), ("candidate", "withdraw", None)]
    served = rollout.read(loop.cfg.rollout_file)  # all traffic on production's Triton version again
    assert served.candidate is None and served.candidate_share == 0.0
    assert served.registry == {"production": str(world["versions"]["dlrm", 1])}
    status = server.status(world["work"] / "triton")
    assert status.loaded["dlrm"] == [served.production]


def test_the_judge_ends_the_cycle_when_a_replica_rolled_the_candidate_back(world):
    loop = loop_at_canary(world, "rolled-back")
    replica = Canary(loop.cfg.rollout_file, "dlrm")
    why = "candidate 2 failed 40% of its last 50 ranking calls (threshold 5%)"
    replica.roll_back(why)  # what an ingress replica writes when the candidate fails
    verdict = loop._step("judge", loop._judge)
    assert verdict["outcome"] == "rolled_back" and why in verdict["summary"], verdict
    assert current("dlrm", "candidate") is None and current("two-tower", "candidate") is None
    # a later `recsys models deploy` serves the aliases: production only, the rolled-back candidate stays out
    again = state_from_registry(world["triton"], 0.5, base=rollout.read(loop.cfg.rollout_file))
    assert again.candidate is None
    events = [json.loads(line) for line in rollout.events_path(loop.cfg.rollout_file).read_text().splitlines()]
    assert [e.get("action") for e in events[-2:]] == ["automatic_rollback", "canary_rollback"]


def test_the_loops_gate_floor_refuses_a_candidate_under_its_baselines(world):
    """With ``gate: {dlrm: {floor: [popularity, logistic]}}`` the DLRM's v2 (no logistic regression recorded beside
    it) cannot become a candidate, and the two-tower does not stay one without it."""
    w = world["work"]
    cfg = LoopConfig(work_dir=str(w / "floor"), trigger_file=str(w / "floor" / "retrain.jsonl"),
                     event_log=str(w / "floor" / "events"), rollout_file=str(w / "rollout.json"),
                     triton_run_dir=str(w / "triton"), gate={"dlrm": GateConfig(floor=("popularity", "logistic"))})
    loop = Loop(cfg, echo=lambda _: None)
    loop.start("test")
    for task in ("dlrm", "two-tower"):
        loop.state.finish_step(f"register.{task}", {"version": world["versions"][task, 2]})
    with pytest.raises(GateRefused, match=r"test/auc 0\.8000: logistic regression's test/auc is not recorded; beats "
                                          r"popularity 0\.6900"):
        loop._candidate()
    assert current("dlrm", "candidate") is None and current("two-tower", "candidate") is None
