"""`scripts/bench_quality.py` against the live app on the tiny shop: every list scored, none degraded (after
test_serving.py: the session's app starts once the loop test, which runs an app of its own, is done)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_the_apps_lists_are_scored_beside_the_bestseller_list_the_ceiling_and_the_oracle(app, tiny_dataset, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_quality.py"), "--url", app.url,
                           "--dataset", str(tiny_dataset.path), "--users", "60", "--k", "5", "--out", str(tmp_path),
                           "--retrieval", app.config.retrieval_export, "--ranker", str(app.work / "dlrm" / "dlrm")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "quality.json").read_text())
    assert (report["users"], report["k"], report["degraded"]) == (60, 5, 0)
    lists = {row["list"].split(":")[0].split(" (")[0]: row for row in report["lists"]}
    assert set(lists) == {"served by the app", "built offline as serving does", "bestseller list", "ceiling", "oracle",
                          "random available items"}
    # the same exports, features and filters without the server: the same lists (purchases fed back to the app by
    # earlier tests may filter a few of its lists), so the offline list metric stands for the live one
    served, offline = (lists[n]["expected_clicks"] for n in ("served by the app", "built offline as serving does"))
    assert served == pytest.approx(offline, rel=0.05)
    assert "served vs built offline" in done.stdout
    # the oracle is the best any list can do, random items far below; the bestseller list is one list for everyone
    assert all(lists["oracle"]["expected_clicks"] >= row["expected_clicks"] for row in report["lists"])
    assert lists["served by the app"]["expected_clicks"] > lists["random available items"]["expected_clicks"]
    assert lists["oracle"]["lift_share"] == pytest.approx(1.0) and lists["bestseller list"]["lift_share"] == 0.0
    assert lists["bestseller list"]["distinct_items"] == 5 and lists["bestseller list"]["top_item_share"] == 1.0
    assert (tmp_path / "quality.png").stat().st_size > 5_000
    assert "served by the app" in done.stdout
