"""The app on live features: a real valkey-server bootstrapped from the tiny dataset, the feature consumer and the
event-log sink reading its stream, two ingress replicas reading its state. A new user stops being cold after their
first events; a purchase fed back to one replica is filtered by every replica and lands in the event log; with
Valkey down the answers come from the snapshot, flagged, and feedback is refused; when it is back, all of it is
automatic again."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest

from recsys.config import IngestConfig
from recsys.data.ingest import read_table
from recsys.eventlog.feedback import FEEDBACK_GLOB
from recsys.events import EVENTS
from recsys.store import server as store_server
from recsys.store.stream import EventStream
from serving.launch import direct_ingress_ports, healthy_ports
from tests.integration.conftest import known_users, recommend
from tests.integration.live_app import AUTH, KEY, live_app

pytestmark = pytest.mark.integration

NEW_USER = 10**12 + 7  # in no table of the dataset
@pytest.fixture(scope="module")
def live(local_ray, served_models, tiny_dataset, schema, tmp_path_factory):
    with live_app(served_models, tiny_dataset, schema, tmp_path_factory.mktemp("live_served")) as app:
        yield app


@pytest.fixture(scope="module")
def http(live):
    with httpx.Client(base_url=live.url, trust_env=False, timeout=60.0) as client:
        yield client


def _replicas():
    return [httpx.Client(base_url=f"http://127.0.0.1:{p}", trust_env=False, timeout=60)
            for p in healthy_ports(direct_ingress_ports())]


def test_known_users_are_served_live_features(live, http):
    for user in known_users(live, 3):
        answer = recommend(http, user_id=user, k=5)
        assert not answer["stale_features"] and not answer["cold_start"] and not answer["degraded"], answer
        assert len(answer["items"]) == 5


def test_a_new_user_is_not_cold_after_their_first_events(live, http):
    first = recommend(http, user_id=NEW_USER, k=5)
    assert first["cold_start"] and not first["stale_features"]
    items = live.dataset.online("items")
    category = items["_category"][0]
    viewed = items.filter(pl.col("_category") == category)["_item"].head(3).to_list()
    newest = store_server.connect(live.store_dir).hget("rs:clock", "events")
    at = datetime.fromtimestamp(int(newest) / 1e6, UTC) + timedelta(minutes=1)
    EventStream(store_server.connect(live.store_dir)).publish([
        {"event_id": 900_000 + n, "timestamp": at + timedelta(seconds=n), "user_id": NEW_USER, "item_id": item,
         "event_type": "view", "session_id": 1} for n, item in enumerate(viewed)])
    live.drained("features")
    for replica in _replicas():  # every replica reads the same store
        with replica:
            answer = recommend(replica, user_id=NEW_USER, k=5)
            assert not answer["cold_start"] and not answer["stale_features"], answer
            assert answer["reason"] is None or "popular" not in answer["reason"]


def test_a_purchase_fed_back_to_one_replica_is_filtered_by_every_replica(live, http):
    user = known_users(live, 4)[3]
    replicas = _replicas()
    served = recommend(replicas[0], user_id=user, k=5)
    bought = served["items"][0]["item_id"]
    r = replicas[0].post("/feedback", json={"request_id": served["request_id"], "user_id": user,
                                             "events": [{"item_id": bought, "event_type": "purchase"}]},
                         headers=AUTH)
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    live.drained("features")
    for replica in replicas:
        assert bought not in [i["item_id"] for i in recommend(replica, user_id=user, k=5)["items"]]
        replica.close()
    live.drained("sink")  # and the event log the next dataset is built from has it
    frame, *_ = read_table(Path(live.config.event_log), EVENTS, IngestConfig(events=FEEDBACK_GLOB))
    logged = frame.collect().filter(pl.col("request_id") == int(served["request_id"]))
    assert logged.select("user_id", "item_id", "event_type").rows() == [(user, bought, "purchase")]


def test_writes_need_the_shops_key_and_a_bad_event_refuses_the_request_whole(live, http):
    client = store_server.connect(live.store_dir)
    user = known_users(live, 5)[4]
    items = live.dataset.online("items")["_item"].head(2).to_list()
    good = [{"user_id": user, "item_id": item, "event_type": "view"} for item in items]
    served = recommend(http, user_id=user, k=2)
    feedback = {"request_id": served["request_id"], "user_id": user,
                "events": [{"item_id": served["items"][0]["item_id"], "event_type": "click"}]}
    before = client.xlen("rs:events")
    for headers in ({}, {"Authorization": "Bearer not-the-key-at-all-0000"}, {"Authorization": KEY}):
        for path, body in (("/events", {"events": good}), ("/feedback", feedback)):
            r = http.post(path, json=body, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, headers, r.text)
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    for bad, where, why in (
            ({"user_id": user, "item_id": items[0], "event_type": "view", "timestamp": future}, "body.events.1",
             "timestamp in the future"),
            ({"user_id": user, "item_id": items[0], "event_type": "impression"}, "body.events.1.event_type", ""),
            ({"user_id": user, "event_type": "view"}, "body.events.1.item_id", "")):
        r = http.post("/events", json={"events": [good[0], bad]}, headers=AUTH)
        assert r.status_code == 422 and where in str(r.json()["detail"]) and why in str(r.json()["detail"]), r.text
    r = http.post("/events", json={"events": [good[0], {"user_id": user, "item_id": 10**12, "event_type": "view"}]},
                  headers=AUTH)
    assert r.status_code == 404 and "not in the catalog" in r.text, r.text
    assert client.xlen("rs:events") == before  # nothing of a refused request was recorded
    views = int(client.hget(f"rs:{{u:{user}}}:n", "n:view") or 0)
    r = http.post("/events", json={"events": good}, headers={**AUTH, "Idempotency-Key": f"page-{user}"})
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
    again = http.post("/events", json={"events": good}, headers={**AUTH, "Idempotency-Key": f"page-{user}"})
    assert again.status_code == 200  # a retry: on the stream twice, counted once
    live.drained("features")
    assert int(client.hget(f"rs:{{u:{user}}}:n", "n:view")) == views + 2


def test_valkey_down_gives_snapshot_features_flagged_and_refuses_feedback_then_recovers(live, http):
    user = known_users(live, 1)[0]
    served = recommend(http, user_id=user, k=3)
    info = store_server.read_state(live.store_dir)
    store_server.stop(live.store_dir)
    try:
        for _ in range(4):  # each replica, through the balancer
            answer = recommend(http, user_id=user, k=3)
            assert answer["stale_features"] and len(answer["items"]) == 3, answer
        r = http.post("/feedback", json={"request_id": served["request_id"], "user_id": user,
                                         "events": [{"item_id": served["items"][0]["item_id"],
                                                     "event_type": "click"}]}, headers=AUTH)
        assert r.status_code == 503 and "nothing was recorded" in r.text, r.text
        events = {"events": [{"user_id": user, "item_id": served["items"][0]["item_id"], "event_type": "view"}]}
        r = http.post("/events", json=events, headers=AUTH)
        assert r.status_code == 503 and "nothing was recorded" in r.text, r.text
    finally:
        store_server.start(live.store_dir, port=info.port, appendfsync="always")
    fresh, deadline = 0, time.monotonic() + 60
    while fresh < 4:  # back on live features, with nobody's help (each replica retries after store.retry_s)
        assert time.monotonic() < deadline, "the app did not go back to live features"
        fresh = fresh + 1 if not recommend(http, user_id=user, k=3)["stale_features"] else 0
        time.sleep(0.1)


def test_the_readme_events_line_works_as_written(live):
    """The README's `curl` line for /events, run by curl against the live app with the shop's key in $KEY."""
    import os
    import subprocess

    from tests.integration.test_serving import readme_curl_lines

    lines = [line for line in readme_curl_lines() if "/events" in line]
    assert lines
    for line in lines:
        command = line.replace("localhost:8000", live.url.removeprefix("http://"))
        out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "KEY": KEY})
        assert out.returncode == 0 and json.loads(out.stdout).get("accepted") == 1, (line, out.stdout, out.stderr)


def test_schemathesis_finds_nothing_on_the_writes(live, tmp_path):
    """`schemathesis run --checks all` on /events and /feedback of the live app, with the shop's key and without:
    no 5xx, every answer as the spec says."""
    import os
    import subprocess
    import sys

    st = str(Path(sys.executable).with_name("schemathesis"))
    for headers in (["-H", f"Authorization: Bearer {KEY}"], []):
        # (all checks but positive_data_acceptance: an event's time must be within minutes of now, which the
        # schema cannot say, so a schema-valid time from another century is rightly a 422)
        out = subprocess.run([st, "--no-color", "run", f"{live.url}/openapi.json", "--checks", "all",
                              "--exclude-checks", "positive_data_acceptance",
                              "--include-path-regex", "^/(events|feedback)$", *headers, "--max-examples", "30",
                              "--workers", "1", "--seed", "1", "--request-timeout", "30"],
                             capture_output=True, text=True, timeout=900, cwd=tmp_path,
                             env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
        assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
