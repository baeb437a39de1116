"""Registration, aliases with their history, the promotion gate and rollback, on a real SQLite MLflow store."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from recsys.errors import RecsysError
from recsys.registry import (
    GateRefused,
    get_version,
    history,
    list_versions,
    production_at,
    promote,
    register,
    rollback,
    withdraw_candidate,
)
from recsys.registry.aliases import current
from recsys.registry.report import history as history_table
from recsys.registry.store import client
from tests.unit.registry.conftest import make_export


def test_register_records_lineage_queryable_in_mlflow(registry, tmp_path):
    v1 = register(make_export(tmp_path, "run-a"), {"dlrm": tmp_path / "repo" / "dlrm" / "1"})
    v2 = register(make_export(tmp_path, "run-b", dataset_id="ds-b"))
    assert (v1.version, v2.version) == (1, 2) and v1.source == v1.tags["export_dir"]
    again = get_version("dlrm", 1)
    assert again.tags == v1.tags and again.metrics["test/auc"] == 0.75 and again.parity_passed
    assert again.tags["triton_version.dlrm"] == "1" and again.tags["registered_by"]
    # the tags are MLflow's own: another client finds a version by its lineage
    found = client(registry).search_model_versions("name='dlrm' and tags.dataset_id='ds-b'")
    assert [int(mv.version) for mv in found] == [2] and found[0].tags["training_run"] == "run-b"
    assert [v.version for v in list_versions("dlrm")] == [1, 2] and list_versions("two-tower") == []


def test_alias_history_and_what_served_production_when(registry, tmp_path):
    for i, auc in enumerate((0.70, 0.72)):
        register(make_export(tmp_path, f"run-{i}", metric=auc))
    first = promote("dlrm", 1, "production", reason="launch", who="alice")
    second = promote("dlrm", 2, "production", reason="better auc", who="bob")
    events = history("dlrm")
    assert [(e.alias, e.from_version, e.to_version, e.who, e.reason) for e in events] == [
        ("production", None, 1, "alice", "launch"), ("production", 1, 2, "bob", "better auc")]
    assert events[1].comparison["production"] == 0.70 and events[1].comparison["candidate"] == 0.72
    assert events[1].comparison["source"] == "recorded"
    assert events[0].when.endswith("Z") and events[0].when < events[1].when
    before = datetime.fromisoformat(first.when) - timedelta(seconds=1)
    assert production_at("dlrm", before) is None
    assert production_at("dlrm", first.when) == 1  # at the instant of a move, the new version
    assert production_at("dlrm", second.when) == 2
    assert production_at("dlrm", datetime.now(UTC).replace(tzinfo=None)) == 2  # naive = UTC
    # the history is registered-model tags in the store itself
    tags = client(registry).get_registered_model("dlrm").tags
    assert json.loads(tags[second.key])["who"] == "bob"


def test_the_gate_refuses_a_worse_model_with_the_numbers(registry, tmp_path):
    register(make_export(tmp_path, "good", metric=0.7539, dataset_id="ds-0cfbd8c5c23a"))
    register(make_export(tmp_path, "worse", metric=0.7412, dataset_id="ds-0cfbd8c5c23a"))
    promote("dlrm", 1, "production")
    with pytest.raises(GateRefused, match=r"test/auc 0\.7412 does not beat production v1's 0\.7539 \+ margin 0 "
                                          r"on dataset ds-0cfbd8c5c23a"):
        promote("dlrm", 2, "production")
    assert len(history("dlrm")) == 1  # nothing moved
    promote("dlrm", 2, "candidate")  # the candidate alias does not compare metrics


def test_equal_metrics_and_the_margin(registry, tmp_path):
    for name, auc in (("a", 0.75), ("same", 0.75), ("slightly", 0.755)):
        register(make_export(tmp_path, name, metric=auc))
    promote("dlrm", 1, "production")
    with pytest.raises(GateRefused, match="does not beat"):  # must be strictly better
        promote("dlrm", 2, "production")
    with pytest.raises(GateRefused, match=r"margin 0.01"):
        promote("dlrm", 3, "production", margin=0.01)
    assert promote("dlrm", 3, "production", margin=0.001).to_version == 3


def test_the_gate_refuses_a_schema_mismatch_and_failed_parity_naming_each(registry, tmp_path):
    register(make_export(tmp_path, "other-schema", schema_hash="0000000000000000", parity=2e-3))
    with pytest.raises(GateRefused) as refused:
        promote("dlrm", 1, "candidate")
    message = str(refused.value)
    assert "parity failed: max abs diffs {\"dlrm\": 0.002} exceed tolerance 1e-05" in message
    assert "schema hash 0000000000000000 != serving schema" in message
    register(make_export(tmp_path, "ok"))
    with pytest.raises(GateRefused, match=r"schema hash .* != serving schema ffff"):
        promote("dlrm", 2, "candidate", serving_schema_hash="ffff")


def test_the_gate_accepts_a_better_model_and_force_is_recorded(registry, tmp_path):
    register(make_export(tmp_path, "a", metric=0.74))
    register(make_export(tmp_path, "b", metric=0.76))
    register(make_export(tmp_path, "c", metric=0.70))
    promote("dlrm", 1, "production")
    assert promote("dlrm", 2, "production").forced is None
    event = promote("dlrm", 3, "production", force_reason="hotfix for a data bug", reason="incident 42")
    assert event.forced == "hotfix for a data bug" and event.to_version == 3
    assert [c["name"] for c in event.checks if not c["passed"]] == ["metric"]
    assert history("dlrm")[-1].forced == "hotfix for a data bug"
    assert get_version("dlrm", 3).aliases == ("production",)


def test_different_datasets_are_compared_by_re_evaluating_both_on_the_candidates(registry, tmp_path):
    register(make_export(tmp_path, "old", metric=0.80, dataset_id="ds-old"))
    register(make_export(tmp_path, "new", metric=0.70, dataset_id="ds-new"))  # a harder test set
    promote("dlrm", 1, "production")
    calls = []

    def evaluate(checkpoint, dataset_path):
        calls.append((checkpoint.split("/")[-3], dataset_path))
        return {"test/auc": 0.71 if "/new/" in checkpoint else 0.69}

    event = promote("dlrm", 2, "production", evaluate=evaluate)
    assert calls == [("new", "/data/ds-new"), ("old", "/data/ds-new")]
    assert event.comparison["candidate"] == 0.71 and event.comparison["production"] == 0.69
    assert event.comparison["source"].startswith("re-evaluated") and event.comparison["dataset_id"] == "ds-new"
    assert "both on dataset ds-new's test events, each with its own dataset's encoders" in event.comparison["source"]


def test_re_evaluations_that_scored_different_rows_fail_the_check(registry, tmp_path):
    register(make_export(tmp_path, "old", metric=0.80, dataset_id="ds-old"))
    register(make_export(tmp_path, "new", metric=0.70, dataset_id="ds-new"))
    promote("dlrm", 1, "production")

    def evaluate(checkpoint, dataset_path):  # the candidate would win, but not on the same test set
        new = "/new/" in checkpoint
        return {"test/auc": 0.71 if new else 0.69, "test/rows": 100.0 if new else 90.0}

    with pytest.raises(GateRefused, match=r"v2 was scored on 100 test/rows and production v1 on 90: not the same "
                                          r"test set of dataset ds-new") as refused:
        promote("dlrm", 2, "production", evaluate=evaluate)
    assert [c["name"] for c in refused.value.checks if not c["passed"]] == ["metric"]


def test_re_evaluation_that_cannot_run_fails_the_check_with_why(registry, tmp_path):
    register(make_export(tmp_path, "old", dataset_id="ds-old"))
    register(make_export(tmp_path, "new", dataset_id="ds-new"))
    promote("dlrm", 1, "production")
    with pytest.raises(GateRefused, match="could not re-evaluate v2 and production v1 on dataset ds-new"):
        promote("dlrm", 2, "production")  # the synthetic checkpoints hold no weights


def test_rollback_returns_to_the_previous_production_version(registry, tmp_path):
    for i, auc in enumerate((0.70, 0.71, 0.72)):
        register(make_export(tmp_path, f"run-{i}", metric=auc))
    with pytest.raises(GateRefused, match="no production version to roll back"):
        rollback("dlrm")
    promote("dlrm", 1, "production")
    with pytest.raises(GateRefused, match="no earlier production version"):
        rollback("dlrm")
    promote("dlrm", 2, "production")
    promote("dlrm", 3, "production")
    event = rollback("dlrm", reason="p99 latency regression", who="carol")
    assert (event.action, event.from_version, event.to_version, event.who) == ("rollback", 3, 2, "carol")
    assert rollback("dlrm").to_version == 1  # and again: the one before that
    assert [e.to_version for e in history("dlrm")] == [1, 2, 3, 2, 1]
    assert production_at("dlrm", event.when) == 2


def test_bad_requests_are_clear(registry, tmp_path):
    register(make_export(tmp_path, "a"))
    with pytest.raises(RecsysError, match="dlrm has no registered version 7"):
        promote("dlrm", 7, "production")
    with pytest.raises(RecsysError, match="unknown alias 'staging'"):
        promote("dlrm", 1, "staging")
    with pytest.raises(RecsysError, match="unknown task 'wide-deep'"):
        history("wide-deep")
    promote("dlrm", 1, "candidate")
    with pytest.raises(RecsysError, match="already candidate"):
        promote("dlrm", 1, "candidate")


def test_a_withdrawn_candidate_loses_its_alias_and_the_move_is_recorded(registry, tmp_path):
    for i in range(2):
        register(make_export(tmp_path, f"run-{i}"))
    promote("dlrm", 1, "production")
    with pytest.raises(RecsysError, match="no candidate version to withdraw"):
        withdraw_candidate("dlrm")
    promote("dlrm", 2, "candidate")
    event = withdraw_candidate("dlrm", reason="lost the canary", who="recsys loop")
    assert (event.alias, event.action, event.from_version, event.to_version) == ("candidate", "withdraw", 2, None)
    assert current("dlrm", "candidate") is None and current("dlrm", "production") == 1
    assert not get_version("dlrm", 2).aliases
    assert [(e.alias, e.to_version) for e in history("dlrm")] == [("production", 1), ("candidate", 2),
                                                                   ("candidate", None)]
    last = history_table(history("dlrm")).splitlines()[-1].split()
    assert last[1:5] == ["candidate", "withdraw", "v2", "(none)"], last
    promote("dlrm", 2, "candidate")  # and it can come back



def test_a_floor_refuses_a_ranker_that_does_not_beat_logistic_regression_even_as_the_first_candidate(registry,
                                                                                                      tmp_path):
    # the demo shop's figures of 2026-12-02: the DLRM under logistic regression on AUC, above it within requests
    register(make_export(tmp_path, "demo", metric=0.7627, extra_metrics={"test/ndcg@10": 0.6455},
                         extra_baselines={"popularity_auc": 0.6979, "logistic_auc": 0.7636,
                                          "popularity_ndcg@10": 0.6249, "logistic_ndcg@10": 0.6434}))
    with pytest.raises(GateRefused, match=r"test/auc 0\.7627: does not beat logistic regression's 0\.7636; beats "
                                          r"popularity 0\.6979"):
        promote("dlrm", 1, "candidate", floor=("popularity", "logistic"))
    assert current("dlrm", "candidate") is None and not history("dlrm")  # nothing moved
    event = promote("dlrm", 1, "candidate", metric="test/ndcg@10", floor=("popularity", "logistic"))
    floor = next(c for c in event.checks if c["name"] == "floor")
    assert floor["passed"] and floor["detail"] == ("test/ndcg@10 0.6455: beats popularity 0.6249, logistic "
                                                   "regression 0.6434")
    with pytest.raises(GateRefused, match="logistic regression's test/recall@100 is not recorded"):  # a retriever
        register(make_export(tmp_path, "tt", task="two-tower", metric=0.6))
        promote("two-tower", 1, "production", floor=("popularity", "logistic"))


def test_production_can_be_compared_on_another_metric(registry, tmp_path):
    register(make_export(tmp_path, "a", metric=0.760, extra_metrics={"test/gauc": 0.7600}))
    register(make_export(tmp_path, "b", metric=0.758, extra_metrics={"test/gauc": 0.7650}))  # lower AUC, higher GAUC
    promote("dlrm", 1, "production")
    with pytest.raises(GateRefused, match=r"test/auc 0\.7580 does not beat production v1's 0\.7600"):
        promote("dlrm", 2, "production")
    event = promote("dlrm", 2, "production", metric="test/gauc")
    assert event.comparison["metric"] == "test/gauc" and event.comparison["candidate"] == 0.765
    with pytest.raises(RecsysError, match=r"the gate compares test metrics \(test/<name>, e.g. test/gauc\), got "
                                          r"'val/auc'"):
        promote("dlrm", 1, "production", metric="val/auc")
    with pytest.raises(RecsysError, match=r"unknown baselines \['bestseller'\]"):
        promote("dlrm", 1, "candidate", floor=("bestseller",))


def test_the_cli_gate_takes_the_metric_and_the_floor(registry, tmp_path, capsys):
    from recsys.cli import main

    register(make_export(tmp_path, "demo", metric=0.7627, extra_metrics={"test/gauc": 0.7638},
                         extra_baselines={"popularity_gauc": 0.6973, "logistic_gauc": 0.7652}))
    assert main(["models", "promote", "1", "--to", "candidate", "--metric", "test/gauc",
                 "--floor", "popularity,logistic"]) == 1
    assert "test/gauc 0.7638: does not beat logistic regression's 0.7652" in capsys.readouterr().err
    assert main(["models", "promote", "1", "--to", "candidate", "--floor", "popularity"]) == 0
    assert "pass  floor   test/auc 0.7627: beats popularity 0.6900" in capsys.readouterr().out


def test_a_model_below_its_floor_on_validation_is_not_registered_the_first_one_included(registry, tmp_path, capsys):
    from recsys.cli import main
    from recsys.registry import BelowFloor

    below = make_export(tmp_path, "below", metric=0.7627,  # its val/auc 0.7527
                        extra_baselines={"popularity_val_auc": 0.6985, "logistic_val_auc": 0.7530})
    with pytest.raises(BelowFloor, match=r"dlrm from training run below is not registered as a candidate: val/auc "
                                         r"0\.7527: does not beat logistic regression's 0\.7530; beats popularity "
                                         r"0\.6985\. A model must beat popularity and logistic regression"):
        register(below)
    assert list_versions("dlrm") == []  # nothing registered, not even as the task's first model
    assert main(["models", "register", str(below)]) == 2
    assert "is not registered as a candidate" in capsys.readouterr().err and list_versions("dlrm") == []
    # a baseline nobody recorded (a run trained before the floor existed) does not count as beaten
    old = make_export(tmp_path, "old", extra_baselines={"logistic_val_auc": None})
    with pytest.raises(BelowFloor, match="logistic regression's val/auc is not recorded"):
        register(old)
    # registered anyway only with a reason, which is kept with the failed check
    forced = register(below, allow_below_floor="the shop asked for it")
    floor = json.loads(forced.tags["registration_floor"])
    assert not floor["passed"] and floor["allowed_because"] == "the shop asked for it"
    # one that clears it is registered with the check it passed
    good = register(make_export(tmp_path, "good"))
    assert json.loads(good.tags["registration_floor"]) == {
        "name": "floor", "passed": True, "detail": "val/auc 0.7400: beats popularity 0.5500, logistic regression "
                                                   "0.6000"}
    # the retriever's floor is popularity on its validation recall@100 (logistic regression ranks no catalogue)
    with pytest.raises(BelowFloor, match=r"val/recall@100 0\.6500: does not beat popularity's 0\.6600"):
        register(make_export(tmp_path, "tt", task="two-tower", metric=0.55,
                             extra_baselines={"popularity_val_recall@100": 0.66}))
    assert register(make_export(tmp_path, "tt2", task="two-tower", metric=0.6)).version == 1
