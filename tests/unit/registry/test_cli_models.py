"""`recsys models`: the tables and views it prints, and exit code 1 with the gate's message on refusal."""

from recsys.cli import main
from tests.unit.registry.conftest import make_export


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_show_diff(registry, tmp_path, capsys):
    assert _run(capsys, "models", "list")[1].startswith("no registered dlrm versions")
    make = lambda name, **kw: str(make_export(tmp_path, name, **kw))  # noqa: E731
    assert _run(capsys, "models", "register", make("run-a", metric=0.7412))[1].startswith("registered dlrm version 1")
    _run(capsys, "models", "register", make("run-b", metric=0.7539, dataset_id="ds-b", parity=1e-3))
    _run(capsys, "models", "promote", "1", "--to", "production")
    code, out, _ = _run(capsys, "models", "list")
    header, rule, first, second = out.splitlines()
    assert header.split() == ["version", "created", "aliases", "dataset", "test", "metric", "parity", "training", "run"]
    assert set(rule) == {"-", " "}
    assert first.split()[0] == "1" and "production" in first and "test/auc=0.7412" in first and "passed" in first
    assert "ds-b" in second and "FAILED" in second and second.split()[2] == "-"
    # columns line up: every row's dataset starts where the header's does
    assert header.index("dataset") == first.index("ds-a") == second.index("ds-b")

    code, out, _ = _run(capsys, "models", "show", "2", "--registry", registry)
    assert code == 0 and out.startswith("dlrm version 2  created ")
    for expected in ("dataset_id", "ds-b", "schema_hash", "code_version", "abc123", "training_run", "run-b",
                     "wandb_run", "checkpoint", "training_config:", "dlrm.embedding_dim", "metrics:", "test/auc",
                     "0.7539", "baselines:", "parity:", "parity_passed", "false", "artifact.dlrm", "export_dir"):
        assert expected in out, expected

    code, out, _ = _run(capsys, "models", "diff", "1", "2")
    rows = {line.split()[1] if line.startswith("*") else line.split()[0]: line for line in out.splitlines()[2:]}
    assert rows["dataset_id"].startswith("*") and "ds-a" in rows["dataset_id"] and "ds-b" in rows["dataset_id"]
    assert rows["metrics.test/auc"].startswith("*") and rows["metrics.test/auc"].rstrip().endswith("+0.0127")
    assert not rows["code_version"].startswith("*") and not rows["metrics.test/logloss"].startswith("*")


def test_promote_refusal_force_rollback_and_history(registry, tmp_path, capsys):
    for name, auc in (("a", 0.75), ("b", 0.76), ("c", 0.74)):
        _run(capsys, "models", "register", str(make_export(tmp_path, name, metric=auc)))
    code, out, _ = _run(capsys, "models", "promote", "1", "--to", "production", "--reason", "launch", "--who", "ann")
    assert code == 0 and "dlrm production (none) -> v1  (promote by ann): launch" in out
    assert "pass  metric  no production version yet" in out
    code, out, _ = _run(capsys, "models", "promote", "2", "--to", "production")
    assert code == 0 and "test/auc 0.7600 beats production v1's 0.7500 + margin 0" in out
    code, out, err = _run(capsys, "models", "promote", "3", "--to", "production")
    assert code == 1 and out == ""
    assert err.startswith("refused: dlrm v3 refused for production: test/auc 0.7400 does not beat production v2's "
                          "0.7600 + margin 0 on dataset ds-a (recorded)")
    code, out, _ = _run(capsys, "models", "promote", "3", "--to", "production", "--force", "rollback drill")
    assert code == 0 and "FAIL  metric" in out and "forced: rollback drill" in out
    code, out, _ = _run(capsys, "models", "rollback", "--reason", "drill over", "--who", "ann")
    assert code == 0 and "production v3 -> v2  (rollback by ann): drill over" in out
    code, out, _ = _run(capsys, "models", "history")
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["when", "(UTC)", "alias", "action", "from", "to"] and len(lines) == 2 + 4
    assert lines[2].split()[1:5] == ["production", "promote", "-", "v1"]
    assert "FORCED: rollback drill" in lines[4] and lines[5].split()[1:6] == ["production", "rollback", "v3", "v2",
                                                                           "ann"]
    assert _run(capsys, "models", "history", "--task", "two-tower")[1].startswith("no alias moves recorded")


def test_a_user_error_exits_2_with_one_line(registry, capsys):
    code, _, err = _run(capsys, "models", "show", "4")
    assert code == 2 and err.strip() == "error: dlrm has no registered version 4; see `recsys models list --task dlrm`"
