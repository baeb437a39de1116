"""The ingress's canary logic on a real rollout state file, without Ray or Triton (the file itself:
tests/unit/deploy/test_rollout_file.py)."""

from __future__ import annotations

from recsys.deploy import rollout
from recsys.deploy.rollout import RolloutState, Thresholds
from serving.canary import Canary, bucket


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
                  "canary", expect_revision=0)
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
                                     thresholds=Thresholds(max_p99_ms=100, min_requests=8)), "slow canary",
                  expect_revision=state.revision)
    assert canary.refresh()
    reasons = [canary.record(True, 500.0) for _ in range(8)]
    assert reasons[-1] and "p99 was 500 ms" in reasons[-1]


def test_a_state_for_another_model_is_ignored(tmp_path):
    path = tmp_path / "rollout.json"
    canary = Canary(path, "dlrm")
    rollout.write(path, RolloutState(model="other", production="4"), "x", expect_revision=0)
    assert not canary.refresh() and canary.variant(1) == ("production", "")


def test_a_replica_follows_a_new_state_that_repeats_its_revision(tmp_path):
    """The whole state is compared, not only the revision: a state file removed and written anew starts again at
    revision 1, and a replica that was at revision 1 of the old file must still follow it."""
    path = tmp_path / "rollout.json"
    rollout.write(path, RolloutState(production="1", candidate="2", candidate_share=1.0), "canary", expect_revision=0)
    canary = Canary(path, "dlrm")
    assert canary.variant(1) == ("candidate", "2") and canary.state.revision == 1
    path.unlink()
    anew = rollout.write(path, RolloutState(production="3"), "a fresh start", expect_revision=0)
    assert anew.revision == 1
    assert canary.refresh() and canary.state == anew and canary.variant(1) == ("production", "3")
    assert not canary.refresh()


def test_a_rollback_over_a_state_that_moved_on_is_not_written(tmp_path):
    path = tmp_path / "rollout.json"
    rollout.write(path, RolloutState(production="1", candidate="2", candidate_share=1.0), "canary", expect_revision=0)
    canary = Canary(path, "dlrm")
    newer = rollout.write(path, RolloutState(production="2"), "promoted meanwhile", expect_revision=1)
    before = path.read_bytes()
    assert canary.roll_back("candidate 2 failed") is None
    assert canary.variant(1) == ("production", "1")  # the replica stops sending users to the candidate at once
    assert path.read_bytes() == before  # but writes nothing over a state it did not act on
    assert [e["reason"] for e in rollout.history(path)] == ["canary", "promoted meanwhile"]
    assert canary.refresh() and canary.state == newer  # and follows the newer state


def test_a_replica_reads_its_own_rollback_back_as_no_change(tmp_path):
    path = tmp_path / "rollout.json"
    rollout.write(path, RolloutState(production="1", candidate="2", candidate_share=1.0), "canary", expect_revision=0)
    canary = Canary(path, "dlrm")
    canary.roll_back("candidate 2 failed")
    assert canary.state == rollout.read(path) and canary.state.revision == 2
    assert not canary.refresh() and canary.variant(1) == ("production", "1")
