"""The Ray Serve application against the real tritonserver, with the tiny trained models: top-k answers,
filters, cold start, degraded mode, feedback, bad requests, health and metrics, and training-serving skew.

One Triton server and one Serve application for the module; the test that stops Triton runs last.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest
import torch
import tritonclient.grpc as grpcclient

from recsys.config import IngestConfig
from recsys.data.features import (
    EVENT_ID,
    ITEM,
    LABEL,
    META_USER,
    POSITION,
    REQUEST,
    TS,
    USER,
    encode_examples,
)
from recsys.data.ingest import read_table
from recsys.deploy import rollout, server
from recsys.eventlog.feedback import FEEDBACK_GLOB as EVENT_GLOB
from recsys.events import EVENTS
from recsys.export.signature import ModelSignature, serving_inputs
from recsys.models.inputs import make_batch
from recsys.online.features import model_inputs
from recsys.training.checkpoint import load_model
from serving.launch import direct_ingress_ports, healthy_ports
from tests.integration.conftest import known_users, recommend
from tests.integration.test_triton import inputs_for

pytestmark = pytest.mark.integration


def test_top_k_ranked_by_triton(app, http):
    request_ids = []
    for user in known_users(app):
        answer = recommend(http, user_id=user, k=10)
        assert not answer["cold_start"] and not answer["degraded"], answer
        items = answer["items"]
        assert len(items) == 10 and len({i["item_id"] for i in items}) == 10
        scores = [i["score"] for i in items]
        assert all(0.0 <= s <= 1.0 for s in scores)
        assert scores == sorted(scores, reverse=True)
        assert answer["model_versions"]["ranking"] == "dlrm:1"
        assert answer["model_versions"]["retrieval"]
        assert set(answer["timings_ms"]) == {"features", "retrieve", "filter", "rank", "total"}
        # a decimal string of an int64: ids are random 63-bit numbers, which a browser's JavaScript would round
        assert isinstance(answer["request_id"], str) and 0 <= int(answer["request_id"]) < 2**63
        request_ids.append(int(answer["request_id"]))
    assert max(request_ids) > 2**53  # (each id is below 2**53 with probability 2**-10: all five, 2**-50)


def test_filters_exclusions_purchases_and_unavailable(app, http):
    f = app.features
    unavailable = set(f.items.filter(~pl.col("_available").fill_null(True))["_item"].to_list())
    for user in known_users(app, 8):
        first = [i["item_id"] for i in recommend(http, user_id=user, k=10)["items"]]
        excluded = first[:3]
        again = [i["item_id"] for i in recommend(http, user_id=user, k=10, exclude=excluded)["items"]]
        assert not set(again) & set(excluded)
        assert not set(first) & f.purchased.get(user, set())
        assert not set(first) & unavailable


def test_few_candidates_left_are_topped_up_with_popular_items(app, http):
    f = app.features
    user = known_users(app, 1)[0]
    allowed = [i for i in f.items["_item"].to_list()[::-1] if f.keep(user, [i], set())][:5]
    exclude = [i for i in f.items["_item"].to_list() if i not in set(allowed)]
    answer = recommend(http, user_id=user, k=5, exclude=exclude)
    assert {i["item_id"] for i in answer["items"]} == set(allowed)
    assert not answer["degraded"] and all(i["score"] is not None for i in answer["items"])


def test_cold_start(app, http):
    answer = recommend(http, user_id=10**15, k=5)
    assert answer["cold_start"] and not answer["degraded"]
    assert [i["item_id"] for i in answer["items"]] == app.features.popular_items()[:5]
    category = app.features.category[answer["items"][0]["item_id"]]
    answer = recommend(http, user_id=10**15, k=3, context={"category": category})
    assert answer["cold_start"] and len(answer["items"]) >= 1
    assert {app.features.category[i["item_id"]] for i in answer["items"]} == {category}


OVERSIZE = json.dumps({"user_id": 1, "exclude": list(range(30_000))}).encode()
BAD = {
    "malformed json": b'{"user_id": 1, "k": ',
    "not an object": b"[1, 2, 3]",
    "missing user_id": b'{"k": 3}',
    "user_id of the wrong type": b'{"user_id": "alice"}',
    "k as a string": b'{"user_id": 1, "k": "5"}',
    "k as a float": b'{"user_id": 1, "k": 2.5}',
    "k zero": b'{"user_id": 1, "k": 0}',
    "k above max_k": b'{"user_id": 1, "k": 51}',
    "negative user_id": b'{"user_id": -4}',
    "unknown field": b'{"user_id": 1, "k": 3, "debug": true}',
    "unknown context field": b'{"user_id": 1, "context": {"weather": "rain"}}',
    "exclude of strings": b'{"user_id": 1, "exclude": ["a"]}',
    "oversize payload": OVERSIZE,
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_requests_get_4xx_and_the_app_keeps_answering(app, http, kind):
    r = http.post("/recommend", content=BAD[kind], headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (kind, r.status_code, r.text)
    body = r.json()
    assert body["error"] and body["detail"], body
    assert recommend(http, user_id=known_users(app, 1)[0], k=2)["items"]


def test_bad_feedback_gets_4xx(app, http):
    user = known_users(app, 1)[0]
    served = recommend(http, user_id=user, k=2)
    click = {"item_id": served["items"][0]["item_id"], "event_type": "click"}
    forged = str(int(served["request_id"]) ^ 1)
    for body, status, problem in (
            ({"request_id": "1", "user_id": 1, "events": []}, 422, "events"),
            ({"request_id": "1", "user_id": 1, "events": [{"item_id": 1, "event_type": "teleport"}]}, 422,
             "event_type"),
            ({"request_id": "1", "user_id": 1, "events": [{"item_id": 1, "event_type": "click", "x": 1}]}, 422, "x"),
            ({"user_id": 1, "events": [click]}, 422, "request_id"),
            ({"request_id": int(served["request_id"]), "user_id": user, "events": [click]}, 422, "valid string"),
            ({"request_id": "12ab", "user_id": user, "events": [click]}, 422, "request_id"),
            ({"request_id": "9" * 19, "user_id": user, "events": [click]}, 422, "int64"),
            ({"request_id": served["request_id"], "user_id": 2**53, "events": [click]}, 422, "user_id"),
            # well formed, but about something that does not exist: 404
            ({"request_id": forged, "user_id": user, "events": [click]}, 404, "not a request id"),
            ({"request_id": served["request_id"], "user_id": user + 1, "events": [click]}, 404, "not a request id"),
            ({"request_id": served["request_id"], "user_id": str(user), "events": [
                click, {"item_id": str(10**12), "event_type": "click"}]}, 404, "not in the catalog")):
        r = http.post("/feedback", json=body)
        assert r.status_code == status and problem in str(r.json()["detail"]), (body, r.text)
    # nothing of a refused request reached the log
    logged = "".join(f.read_text() for f in Path(app.config.event_log).glob(EVENT_GLOB))
    assert f'"request_id":{served["request_id"]},' not in logged


def test_feedback_is_appended_and_readable_by_ingest(app, http):
    user = known_users(app, 1)[0]
    served = recommend(http, user_id=user, k=5)
    shown = [i["item_id"] for i in served["items"]]
    events = [{"item_id": item, "event_type": "impression", "position": p} for p, item in enumerate(shown)]
    events += [{"item_id": shown[1], "event_type": "click", "position": 1},
               {"item_id": shown[1], "event_type": "purchase"}]
    r = http.post("/feedback", json={"request_id": served["request_id"], "user_id": user, "events": events})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == len(events)
    # what the 2xx promised is on disk, in the shop format the pipeline ingests
    frame, *_ = read_table(Path(app.config.event_log), EVENTS, IngestConfig(events=EVENT_GLOB))
    frame = frame.collect().filter(pl.col("request_id") == int(served["request_id"]))
    assert frame.height == len(events)
    assert frame["event_type"].to_list() == [e["event_type"] for e in events]
    assert frame["item_id"].to_list() == [e["item_id"] for e in events]
    assert set(frame["user_id"].to_list()) == {user}
    assert frame["timestamp"].null_count() == 0 and frame["event_id"].n_unique() == len(events)
    # a purchased item is not recommended again, by any replica (each follows the shared feedback log)
    for port in healthy_ports(direct_ingress_ports()):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=60) as replica:
            deadline = time.monotonic() + 60
            while shown[1] in (after := [i["item_id"] for i in recommend(replica, user_id=user, k=5)["items"]]):
                assert time.monotonic() < deadline, f"replica on {port} still recommends the purchased item"
                time.sleep(0.2)
            assert shown[1] not in after


def test_a_retried_feedback_is_recorded_once(app, http):
    """The same request sent again (a client's retry, to the same replica or another): its events keep their ids,
    the replica that wrote them writes nothing the second time, and every reader counts each event once."""
    from recsys.monitoring import online

    user = known_users(app, 2)[1]
    port = healthy_ports(direct_ingress_ports())[0]
    served = recommend(http, user_id=user, k=3)
    events = [{"item_id": i["item_id"], "event_type": "impression", "position": p}
              for p, i in enumerate(served["items"])]
    body = {"request_id": served["request_id"], "user_id": user, "events": events}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=60) as replica:
        first, again = replica.post("/feedback", json=body).json(), replica.post("/feedback", json=body).json()
        assert (first["accepted"], first["duplicates"]) == (3, 0)
        assert (again["accepted"], again["duplicates"]) == (3, 3)
        keyed = {**body, "events": events[:2]}
        headers = {"Idempotency-Key": f"order-{served['request_id']}"}
        assert replica.post("/feedback", json=keyed, headers=headers).json()["duplicates"] == 0
        assert replica.post("/feedback", json=keyed, headers=headers).json()["duplicates"] == 2  # replayed
        r = replica.post("/feedback", json=body, headers=headers)  # the key again, for another body
        assert r.status_code == 422 and "Idempotency-Key" in str(r.json()["detail"])
    retried = http.post("/feedback", json=body)  # through the balancer: perhaps the other replica
    assert retried.status_code == 200
    lines = [line for f in Path(app.config.event_log).glob(EVENT_GLOB) for line in f.read_text().splitlines()
             if f'"request_id":{served["request_id"]},' in line]
    ids = [json.loads(line)["event_id"] for line in lines]
    assert len(set(ids)) == 3 + 2 and len(ids) in (5, 8)  # 3 events, 2 keyed; the other replica wrote 3 again
    counted = online.feedback(app.config.event_log).collect().filter(pl.col("request_id") == int(served["request_id"]))
    assert counted.height == 5


def readme_curl_lines() -> list[str]:
    """Every `curl` command the READMEs show."""
    import re

    from tests.conftest import ROOT

    lines = []
    for readme in (ROOT / "README.md", ROOT / "serving" / "README.md"):
        for block in re.findall(r"```bash\n(.*?)```", readme.read_text(), flags=re.S):
            commands = re.findall(r"^(curl .*?)(?=^\S|\Z)", block, flags=re.S | re.M)
            lines += [c.strip() for c in commands]
    return lines


def test_the_readme_curl_lines_work_as_written(app):
    """Every `curl` line the READMEs show, run by curl itself against the app (only the address and the
    request id of the previous answer put in); /events needs the live store: `test_live_served.py` runs it."""
    import subprocess

    lines = [line for line in readme_curl_lines() if "/events" not in line]
    assert len(lines) >= 3, lines
    address = app.url.removeprefix("http://")
    answer = None
    for line in lines:
        command = line.replace("localhost:8000", address)
        if "<from the answer>" in command:
            command = command.replace("<from the answer>", answer["request_id"])
        out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (line, out.stderr)
        body = json.loads(out.stdout)
        if "/recommend" in line:
            assert body["items"] and body["request_id"], (line, body)
            answer = body
        else:
            assert body["accepted"] >= 1, (line, body)


def test_the_openapi_spec_says_what_the_app_answers(app, http):
    spec = http.get("/openapi.json").json()
    problem = spec["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"error", "detail"}
    for path in ("/recommend", "/feedback"):
        responses = spec["paths"][path]["post"]["responses"]
        assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/Problem")
        assert "413" in responses
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == [http.get("/metrics").headers["content-type"]]
    limits = spec["components"]["schemas"]["RecommendRequest"]["properties"]
    assert (limits["k"]["maximum"], limits["exclude"]["maxItems"]) == (app.config.max_k, app.config.max_exclude)
    request_id = spec["components"]["schemas"]["RecommendResponse"]["properties"]["request_id"]
    assert request_id["type"] == "string"
    bad = http.post("/recommend", json={"user_id": "x"})
    assert bad.status_code == 422 and set(bad.json()) == {"error", "detail"}


def test_schemathesis_finds_nothing(app, tmp_path):
    """`schemathesis run --checks all` against the live app, bounded: no 5xx, every answer as the spec says."""
    import subprocess
    import sys

    st = str(Path(sys.executable).with_name("schemathesis"))
    out = subprocess.run([st, "--no-color", "run", f"{app.url}/openapi.json", "--checks", "all", "--max-examples",
                          "30", "--workers", "1", "--seed", "1", "--request-timeout", "30"],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path,  # (its cache goes there)
                         env={**os.environ, "SCHEMATHESIS_HOOKS": ""})
    print(out.stdout[-4000:])
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]


def test_served_requests_are_logged_with_the_model_inputs(app, http):
    from recsys.eventlog.requests import REQUEST_GLOB

    users = known_users(app, 3)
    answers = {int(recommend(http, user_id=u, k=4)["request_id"]): u for u in users}

    def logged() -> pl.DataFrame:  # each replica flushes its log within a second; wait for the rows, not a time
        frames = [pl.read_ndjson(f) for f in Path(app.config.event_log).glob(REQUEST_GLOB) if f.stat().st_size]
        return pl.concat(frames, how="diagonal_relaxed").filter(pl.col("request_id").is_in(list(answers)))

    deadline = time.monotonic() + 60
    while (frame := logged()).height < len(answers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert frame.height == len(answers)
    online = app.features.users.filter(pl.col(META_USER).is_in(users))
    for row in frame.iter_rows(named=True):
        expected = online.filter(pl.col(META_USER) == row["user_id"]).row(0, named=True)
        assert answers[row["request_id"]] == row["user_id"], row
        assert len(row["items"]) == len(row["scores"]) == 4, row
        inputs = row["inputs"]
        for name in ("user_id", "user_country", "user_device", "user_history"):  # encoded, as the model saw them
            assert inputs[name] == expected[name], name
        assert inputs["user_views"] == pytest.approx(expected["user_views"])


def test_health_readiness_and_metrics(app, http):
    assert http.get("/healthz").json() == {"status": "ok"}
    r = http.get("/readyz")
    body = r.json()
    assert r.status_code == 200 and body["ready"] and body["checks"] == {
        "features": True, "datasets": True, "index": True, "triton": True}
    assert body["versions"] == (rollout.read(app.config.rollout_file).versions
                                if Path(app.config.rollout_file).is_file() else ["newest"])
    text = http.get("/metrics").text
    assert 'recsys_stage_latency_seconds_bucket{le="0.05",stage="rank"}' in text
    assert 'recsys_http_requests_total{route="/recommend",status="200"}' in text
    assert "openapi" in http.get("/openapi.json").json()


def test_online_inputs_equal_offline_features_and_triton_equals_torch(app, dlrm_run, tiny_dataset, schema):
    """Training-serving skew: the online DLRM inputs of (user, item) pairs are what the offline pipeline's
    example encoder computes for the same pairs at the online tables' time, and Triton scores them like the
    trained torch model."""
    from recsys.data.dataset import load_builder

    f = app.features
    users = [*known_users(app, 4), f.users[META_USER][-1]]
    items = f.items["_item"].head(7).to_list() + f.items["_item"].tail(3).to_list()
    specs = model_inputs(schema, "dlrm")
    assert specs == ModelSignature.read(app.work / "dlrm" / "dlrm").inputs
    assert model_inputs(schema, "two_tower.user") == ModelSignature.read(
        app.work / "two-tower" / "query_tower").inputs

    validated = Path(tiny_dataset.manifest.sources["validated"]["events"]["path"]).parent
    builder = load_builder(validated, schema)
    as_of = datetime.fromisoformat(f.as_of)
    pairs = pl.DataFrame({USER: [u for u in users for _ in items], ITEM: items * len(users)})
    rows = pairs.with_columns(pl.int_range(pl.len()).cast(pl.Int64).alias(EVENT_ID),
                              pl.lit(as_of, dtype=pl.Datetime("us", "UTC")).alias(TS),
                              pl.lit(None, dtype=pl.Int64).alias(REQUEST), pl.lit(0, dtype=pl.Int32).alias(POSITION),
                              pl.lit(0.0).alias(LABEL))
    offline = encode_examples(builder, rows.lazy(), "ranking").collect()
    per_user = [f.ranking_inputs(f.user(u), items, specs) for u in users]
    online = {s.name: np.concatenate([arrays[s.name] for arrays in per_user]) for s in specs}
    assert len(np.unique(online["user_category_share"])) > 1  # pairs in categories the users viewed, and others
    offline_arrays = serving_inputs(offline, specs)
    assert online.keys() == offline_arrays.keys()
    for spec in specs:
        np.testing.assert_array_equal(online[spec.name], offline_arrays[spec.name],
                                      err_msg=f"feature {spec.name}: online != offline")

    model, _ = load_model(dlrm_run.checkpoint)
    with torch.no_grad():
        expected = torch.sigmoid(model(make_batch(offline, model.spec))).numpy().reshape(-1)
    client = grpcclient.InferenceServerClient(app.triton.grpc_url)
    result = client.infer("dlrm", inputs_for(grpcclient, online))
    client.close()
    got = result.as_numpy(ModelSignature.read(app.work / "dlrm" / "dlrm").outputs[0].name).reshape(-1)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_degraded_when_triton_stops_and_recovers_when_it_returns(app, http):
    """Runs last: stops the module's Triton server, then starts it again on the same ports."""
    user = known_users(app, 1)[0]
    server.stop(app.work / "triton")
    answer = recommend(http, user_id=user, k=6)
    assert answer["degraded"] and not answer["cold_start"]
    assert len(answer["items"]) == 6 and all(i["score"] is None for i in answer["items"])
    assert "ranking" not in answer["model_versions"]
    r = http.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["triton"] is False
    info = app.triton
    server.start(Path(info.repository), ["dlrm"], run_dir=app.work / "triton", http_port=info.http_port,
                 grpc_port=info.grpc_port, metrics_port=info.metrics_port)
    deadline = time.monotonic() + 60
    while http.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the app not ready within 60 s of Triton's restart"
        time.sleep(0.5)
    answer = recommend(http, user_id=user, k=6)
    assert not answer["degraded"] and answer["items"][0]["score"] is not None, answer



def test_degraded_when_triton_is_slower_than_the_deadline(app, http):
    """Runs after the restart: freezes the tritonserver process (SIGSTOP), so every ranking call outlives the
    deadline, then lets it go on."""
    pid = server.read_state(app.work / "triton").pid
    os.kill(pid, signal.SIGSTOP)
    try:
        answer = recommend(http, user_id=known_users(app, 1)[0], k=4)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert answer["degraded"] and "deadline" in answer["reason"].lower(), answer
    assert len(answer["items"]) == 4 and all(i["score"] is None for i in answer["items"])
    assert answer["timings_ms"]["rank"] >= app.config.rank_deadline_s * 1000
    assert http.get("/healthz").status_code == 200
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and recommend(http, user_id=known_users(app, 1)[0], k=4)["degraded"]:
        time.sleep(0.5)
    assert not recommend(http, user_id=known_users(app, 1)[0], k=4)["degraded"]
