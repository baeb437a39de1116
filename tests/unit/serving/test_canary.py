"""The rollout state file and the ingress's canary logic, without Ray or Triton."""

from __future__ import annotations

import pytest

from recsys.deploy import rollout
from recsys.deploy.rollout import RolloutState, Thresholds
from recsys.errors import RecsysError
from serving.canary import Canary, bucket


def test_state_file_revisions_history_and_compare_and_swap(tmp_path):
    path = tmp_path / "rollout.json"
    assert rollout.read(path) is None and rollout.history(path) == []
    first = rollout.write(path, RolloutState(production="1"), "start")
    second = rollout.write(path, RolloutState(production="1", candidate="2", candidate_share=0.1), "canary")
    assert (first.revision, second.revision) == (1, 2)
    assert rollout.read(path) == second
    assert rollout.write(path, RolloutState(production="2"), "stale", expect_revision=1) is None  # moved on
    assert rollout.read(path) == second
    assert [e["reason"] for e in rollout.history(path)] == ["start", "canary"]
    with pytest.raises(RecsysError, match="candidate_share"):
        RolloutState(candidate="2", candidate_share=1.5)
    with pytest.raises(RecsysError, match="both version 2"):
        RolloutState(production="2", candidate="2")
    path.write_text("{not json")
    with pytest.raises(RecsysError, match="not a rollout state"):
        rollout.read(path)


def test_assignment_is_sticky_close_to_the_share_and_redrawn_per_candidate():
    users = range(20_000)
    share = sum(bucket("7", u) < 0.1 for u in users) / len(users)
    assert abs(share - 0.1) < 0.01
    assert [bucket("7", u) for u in range(50)] == [bucket("7", u) for u in range(50)]
    in_7 = {u for u in users if bucket("7", u) < 0.1}
    in_8 = {u for u in users if bucket("8", u) < 0.1}
    assert len(in_7 & in_8) < 0.2 * len(in_7)  # another candidate: another draw, not the same users again


def test_canary_follows_the_file_and_rolls_back_past_its_thresholds(tmp_path):
    path = tmp_path / "rollout.json"
    canary = Canary(path, "dlrm", default_version="")
    assert canary.variant(1) == ("production", "")  # no file: the newest version
    rollout.write(path, RolloutState(production="1", candidate="2", candidate_share=1.0,
                                     thresholds=Thresholds(max_error_rate=0.25, max_p99_ms=100, min_requests=8)),
                  "canary")
    assert canary.refresh() and not canary.refresh()  # read once per change
    assert canary.variant(1) == ("candidate", "2")
    for _ in range(7):
        assert canary.record(False, 5.0) is None  # too few calls to judge
    reason = canary.record(True, 5.0)
    assert reason and "failed 88% of its last 8" in reason
    canary.roll_back(reason)
    assert canary.variant(1) == ("production", "1")
    state = rollout.read(path)
    assert state.candidate is None and state.reason.startswith("automatic rollback: candidate 2 failed")
    assert rollout.history(path)[-1]["rolled_back"] == "2"

    rollout.write(path, RolloutState(production="1", candidate="3", candidate_share=1.0,
                                     thresholds=Thresholds(max_p99_ms=100, min_requests=8)), "slow canary")
    assert canary.refresh()
    reasons = [canary.record(True, 500.0) for _ in range(8)]
    assert reasons[-1] and "p99 was 500 ms" in reasons[-1]


def test_a_state_for_another_model_is_ignored(tmp_path):
    path = tmp_path / "rollout.json"
    canary = Canary(path, "dlrm")
    rollout.write(path, RolloutState(model="other", production="4"), "x")
    assert not canary.refresh() and canary.variant(1) == ("production", "")
