"""Traffic between model versions on the running app and a real Triton: canary assignment, per-variant metrics
and feedback, automatic rollback of a failing candidate, and a promotion under load that fails no request.

Version 1 of the ranking model is the tiny DLRM; version 2 is the same export added again (the mechanics are
what is tested here; which version is better is the registry's gate)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from recsys.deploy import rollout, triton_control
from recsys.deploy.repository import add_version
from recsys.deploy.rollout import RolloutState, Thresholds
from recsys.eventlog.request_ids import variant_of
from serving.launch import direct_ingress_ports, healthy_ports
from tests.integration.conftest import recommend, settle
from tests.integration.load import run_load, tally

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_versions(app):
    """dlrm versions 1 and 2 in the repository, both loaded; production 1. Afterwards the session's app serves
    production 1 alone again."""
    add_version(app.triton.repository, app.work / "dlrm" / "dlrm")
    path = app.config.rollout_file
    triton_control.apply(path, RolloutState(production="1"), "test: start", expect_revision=rollout.revision(path),
                         info=app.triton)
    triton_control.sync(app.triton, "dlrm", ["1", "2"])
    yield app
    triton_control.apply(path, RolloutState(production="1"), "test: the session's app as it was",
                         expect_revision=rollout.revision(path), info=app.triton, grace_s=0.5)
    settle(app)


def users(app, n: int) -> list[int]:
    return app.features.users["_user"].head(n).to_list()


def replica_metrics(app) -> list[str]:
    """Each ingress replica's /metrics (every replica counts what it served)."""
    texts = []
    for port in healthy_ports(direct_ingress_ports()):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=30) as replica:
            texts.append(replica.get("/metrics").text)
    return texts


def total(texts: list[str], sample: str) -> float:
    """A sample's value summed over the replicas' /metrics texts."""
    return sum(float(line.rsplit(" ", 1)[1]) for text in texts for line in text.splitlines()
               if line.startswith(sample + " "))


def test_canary_share_is_sticky_and_split_in_metrics_and_feedback(two_versions, http):
    app = two_versions
    triton_control.apply(app.config.rollout_file, RolloutState(production="1", candidate="2", candidate_share=0.3),
                         "test: canary 30%", expect_revision=None, info=app.triton)  # a test's state, from scratch
    settle(app)
    first = {u: recommend(http, user_id=u, k=3) for u in users(app, 300)}
    share = sum(a["variant"] == "candidate" for a in first.values()) / len(first)
    assert 0.22 <= share <= 0.38, share
    for a in first.values():
        assert not a["degraded"]
        assert a["model_versions"]["ranking"] == ("dlrm:2" if a["variant"] == "candidate" else "dlrm:1")
        assert variant_of(int(a["request_id"])) == a["variant"]
    again = {u: recommend(http, user_id=u, k=3)["variant"] for u in users(app, 60)}
    assert again == {u: first[u]["variant"] for u in again}  # sticky
    served = next(a for a in first.values() if a["variant"] == "candidate")
    r = http.post("/feedback", json={"request_id": served["request_id"], "user_id": served["user_id"],
                                     "events": [{"item_id": served["items"][0]["item_id"], "event_type": "click"}]})
    assert r.status_code == 200, r.text
    metrics = replica_metrics(app)
    ranked = {v: total(metrics, f'recsys_variant_requests_total{{variant="{v}"}}') for v in ("candidate", "production")}
    assert ranked["candidate"] >= sum(a["variant"] == "candidate" for a in first.values()) and ranked["production"]
    assert total(metrics, 'recsys_feedback_events_total{event_type="click",variant="candidate"}') == 1.0


def test_a_failing_candidate_is_rolled_back_automatically(two_versions, http):
    app = two_versions
    state = RolloutState(production="1", candidate="2", candidate_share=0.5,
                         thresholds=Thresholds(max_error_rate=0.2, min_requests=10, window=50))
    triton_control.apply(app.config.rollout_file, state, "test: canary 50%", expect_revision=None, info=app.triton)
    settle(app)
    triton_control.sync(app.triton, "dlrm", ["1"])  # the candidate's version disappears behind the app's back
    answers = [recommend(http, user_id=u, k=3) for u in users(app, 80)]
    assert all(not a["degraded"] and a["variant"] == "production" for a in answers[-20:])
    assert not any(a["degraded"] for a in answers)  # failed candidate calls were answered by production
    state = rollout.read(app.config.rollout_file)
    assert state.candidate is None and state.candidate_share == 0.0
    assert state.reason.startswith("automatic rollback: candidate 2 failed")
    event = rollout.history(app.config.rollout_file)[-1]
    assert event["action"] == "automatic_rollback" and event["rolled_back"] == "2"
    # one replica wrote the rollback; the other followed it (or lost the compare-and-swap to it): counted once
    assert total(replica_metrics(app), "recsys_automatic_rollbacks_total") == 1.0
    triton_control.sync(app.triton, "dlrm", ["1", "2"])


def test_promotion_and_rollback_under_load_fail_no_request(two_versions):
    """250 requests at 25/s; the promotion starts at request 50, the rollback at request 150; requests 100 and 200
    wait until the promotion and the rollback have finished (on a slow machine they take longer than 50
    requests), so at least 50 requests are answered after each."""
    app = two_versions
    path = app.config.rollout_file
    triton_control.apply(path, RolloutState(production="1", candidate="2", candidate_share=0.2), "test: canary 20%",
                         expect_revision=rollout.revision(path), info=app.triton)
    settle(app)
    moments: dict[str, float] = {}

    def promote() -> None:  # loads nothing new, switches, then unloads version 1 under load
        triton_control.apply(path, RolloutState(production="2"), "test: promote 2",
                             expect_revision=rollout.revision(path), info=app.triton, grace_s=1.5)
        moments["promoted"] = time.monotonic()

    def roll_back() -> None:  # loads 1 again beside 2, switches, unloads 2
        moments["rolling_back"] = time.monotonic()
        triton_control.apply(path, RolloutState(production="1"), "test: roll back to 1",
                             expect_revision=rollout.revision(path), info=app.triton, grace_s=1.5)
        moments["rolled_back"] = time.monotonic()

    ids = users(app, 200)
    outcomes = run_load(app.url, 250, 25.0, lambda i: ("/recommend", {"user_id": ids[i % len(ids)], "k": 3}),
                        at={50: promote, 150: roll_back}, after={100: 50, 200: 150})
    assert tally(outcomes) == {"ok": 250}, tally(outcomes)  # every request answered and ranked
    versions = [(o.answered, o.body["model_versions"].get("ranking", "")) for o in outcomes]
    promoted = [v for t, v in versions if moments["promoted"] < t < moments["rolling_back"]]
    rolled_back = [v for t, v in versions if t > moments["rolled_back"]]
    assert len(promoted) >= 50 and set(promoted) == {"dlrm:2"}
    assert len(rolled_back) >= 50 and set(rolled_back) == {"dlrm:1"}
    assert [e["reason"] for e in rollout.history(path)][-2:] == ["test: promote 2", "test: roll back to 1"]


def test_deploy_serves_the_registry_aliases(two_versions, http):
    """`recsys models deploy`: production and candidate from the registry; a version never added to this
    Triton repository is added, loaded beside production, and serves its share."""
    import tritonclient.http as httpclient

    from recsys import registry
    from recsys.cli import main as recsys_main

    app = two_versions
    ours = [v for v in registry.list_versions("dlrm")
            if v.tags.get("triton_repository.dlrm") == str(Path(app.triton.repository).resolve())]
    assert len(ours) == 1 and ours[0].tags["triton_version.dlrm"] == "1"
    registry.promote("dlrm", ours[0].version, "production", force_reason="test: whatever production was")
    fresh = registry.register(app.work / "dlrm")  # the same export, never added to this repository
    registry.promote("dlrm", fresh.version, "candidate")
    triton_dir = str(app.work / "triton")
    assert recsys_main(["models", "deploy", "--share", "0.5", "--triton-run-dir", triton_dir,
                        "--rollout-file", app.config.rollout_file, "--grace", "0.5"]) == 0
    state = rollout.read(app.config.rollout_file)
    added = registry.get_version("dlrm", fresh.version).tags["triton_version.dlrm"]
    assert (state.production, state.candidate, state.candidate_share) == ("1", added, 0.5)
    assert added not in ("1", "2") and (Path(app.triton.repository) / "dlrm" / added).is_dir()
    assert state.registry == {"production": str(ours[0].version), "candidate": str(fresh.version)}
    client = httpclient.InferenceServerClient(app.triton.http_url)
    try:
        assert client.is_model_ready("dlrm", added) and client.is_model_ready("dlrm", "1")
        assert not client.is_model_ready("dlrm", "2")  # named by neither alias: unloaded
    finally:
        client.close()
    settle(app)
    seen = {recommend(http, user_id=u, k=3)["model_versions"]["ranking"] for u in users(app, 40)}
    assert seen == {"dlrm:1", f"dlrm:{added}"}
