"""The rollout state file: revisions, history, and compare-and-swap that holds between real processes."""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import replace

import pytest

from recsys.deploy import rollout, triton_control
from recsys.deploy.rollout import RolloutConflict, RolloutState, Thresholds
from recsys.errors import RecsysError

WRITERS = 4
INCREMENTS = 40  # per writer


def test_revisions_history_and_a_stale_write_refused(tmp_path):
    path = tmp_path / "rollout.json"
    assert rollout.read(path) is None and rollout.history(path) == [] and rollout.revision(path) == 0
    first = rollout.write(path, RolloutState(production="1"), "start", expect_revision=0)
    second = rollout.write(path, RolloutState(production="1", candidate="2", candidate_share=0.1), "canary",
                           expect_revision=first.revision)
    assert (first.revision, second.revision) == (1, 2) and rollout.revision(path) == 2
    assert rollout.read(path) == second
    before = path.read_bytes(), rollout.events_path(path).read_bytes()
    with pytest.raises(RolloutConflict) as err:
        rollout.write(path, RolloutState(production="2"), "stale", expect_revision=1)
    assert (err.value.expected, err.value.found) == (1, 2)
    assert "at revision 2" in str(err.value) and "based on revision 1" in str(err.value)
    assert isinstance(err.value, RecsysError)  # the CLI prints it as one line
    assert (path.read_bytes(), rollout.events_path(path).read_bytes()) == before  # nothing written
    with pytest.raises(RolloutConflict, match="at revision 2, but this change was based on revision 0"):
        rollout.write(path, RolloutState(production="2"), "thought it was new", expect_revision=0)
    forced = rollout.write(path, RolloutState(production="3"), "not derived from the file", expect_revision=None)
    assert forced.revision == 3
    assert [(e["revision"], e["reason"]) for e in rollout.history(path)] == [
        (1, "start"), (2, "canary"), (3, "not derived from the file")]
    assert rollout.lock_path(path).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # no staging files left behind
        "rollout.json", "rollout.json.events.jsonl", "rollout.json.lock"]


def test_invalid_states_and_files_are_refused(tmp_path):
    with pytest.raises(RecsysError, match="candidate_share"):
        RolloutState(candidate="2", candidate_share=1.5)
    with pytest.raises(RecsysError, match="both version 2"):
        RolloutState(production="2", candidate="2")
    path = tmp_path / "rollout.json"
    path.write_text("{not json")
    with pytest.raises(RecsysError, match="not a rollout state"):
        rollout.read(path)


def _increment(path: str, start, times: int) -> int:
    """Read-modify-write ``thresholds.window`` + 1, ``times`` times, through the CAS API; the conflicts met."""
    start.wait()
    conflicts = 0
    for _ in range(times):
        while True:
            seen = rollout.read(path)
            bumped = replace(seen, thresholds=replace(seen.thresholds, window=seen.thresholds.window + 1))
            try:
                rollout.write(path, bumped, "increment", expect_revision=seen.revision)
                break
            except RolloutConflict:
                conflicts += 1
    return conflicts


def test_concurrent_writers_lose_no_update(tmp_path):
    path = tmp_path / "rollout.json"
    rollout.write(path, RolloutState(production="1", thresholds=Thresholds(window=0)), "start", expect_revision=0)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Manager().Event()
    with ctx.Pool(WRITERS) as pool:
        pending = [pool.apply_async(_increment, (str(path), start, INCREMENTS)) for _ in range(WRITERS)]
        start.set()  # every writer begins at once
        conflicts = [p.get(timeout=300) for p in pending]
    total = WRITERS * INCREMENTS
    final = rollout.read(path)
    assert final.thresholds.window == total, f"{total - final.thresholds.window} of {total} increments lost"
    assert final.revision == total + 1
    events = [json.loads(line) for line in rollout.events_path(path).read_text().splitlines()]
    assert len(events) == total + 1  # one line per successful write
    revisions = [e["revision"] for e in events]
    assert revisions == list(range(1, total + 2))  # strictly increasing, none written twice
    print(f"{WRITERS} writers x {INCREMENTS} increments: {sum(conflicts)} conflicts retried")


def test_apply_with_a_stale_revision_is_refused_and_changes_nothing(tmp_path):
    path = tmp_path / "rollout.json"
    read = rollout.write(path, RolloutState(production="1"), "start", expect_revision=0)
    rollout.write(path, RolloutState(production="1", candidate="2", candidate_share=0.2), "someone else's canary",
                  expect_revision=read.revision)
    before = path.read_bytes(), rollout.events_path(path).read_bytes()
    with pytest.raises(RolloutConflict) as err:
        triton_control.apply(path, RolloutState(production="3"), "promote 3", expect_revision=read.revision)
    assert "at revision 2" in str(err.value) and "based on revision 1" in str(err.value)
    assert (path.read_bytes(), rollout.events_path(path).read_bytes()) == before
    applied = triton_control.apply(path, RolloutState(production="3"), "promote 3", expect_revision=2)
    assert applied.revision == 3 and rollout.read(path) == applied
