"""The serving application's parts without Ray: config, online features, the event log, the body limit."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import polars as pl
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from recsys.config import ConfigError
from recsys.data.dataset import Dataset
from recsys.data.features import META_CATEGORY, META_USER
from recsys.data.ingest import read_table
from recsys.errors import RecsysError
from recsys.eventlog.feedback import FEEDBACK_INGEST, FeedbackLog, event_id_for
from recsys.eventlog.request_ids import KEY_ENV, RequestIds, request_key, variant_of
from recsys.events import EVENTS
from recsys.export.signature import serving_inputs
from recsys.online.features import OnlineFeatures, encoded_default, model_inputs
from recsys.serving_config import ServingConfig, from_args
from serving.datasets import DatasetUnavailable, FeaturesByDataset
from serving.metrics import CountAnswers, Metrics
from serving.request_body import RequestBody


def test_config_from_application_args(tmp_path):
    path = tmp_path / "serving.yaml"
    path.write_text("candidates: 50\nbatching: {max_batch_size: 8}\n")
    config = from_args({"config": str(path), "set": ["max_k=20", "triton_url=127.0.0.1:9"]})
    assert (config.candidates, config.max_k, config.triton_url, config.batching.max_batch_size) == (
        50, 20, "127.0.0.1:9", 8)
    with pytest.raises(ConfigError, match="unknown"):
        from_args({"config": str(path), "replicas": 3})
    with pytest.raises(ConfigError, match="max_k"):
        ServingConfig(max_k=0)


@pytest.fixture(scope="module")
def features(tiny_dataset, schema):
    return OnlineFeatures(tiny_dataset, schema, popular_items=50)


def test_filters_and_cold_start(features):
    user = next(u for u, items in features.purchased.items() if items and features.user(u) is not None)
    bought = sorted(features.purchased[user])
    items = features.items["_item"].to_list()
    unavailable = set(features.items.filter(~pl.col("_available").fill_null(True))["_item"].to_list())
    kept = features.keep(user, [*items, -1], exclude={items[0]})
    assert not set(kept) & ({items[0], -1} | set(bought) | unavailable)
    assert kept == [i for i in items if i in set(kept)]  # order kept
    assert features.user(-12345) is None
    popular = features.popular_items()
    assert len(popular) == 50 and not set(popular) & unavailable
    category = features.category[popular[0]]
    assert {features.category[i] for i in features.popular_items(category)} == {category}


def test_ranking_inputs_gather_the_online_tables(features, schema):
    """Each candidate row: the user's row, the item's row, the (user, item category) share or its encoded
    default, position 0. (That these equal the offline pipeline's encoding is the integration skew test.)"""
    cross = features.cross
    user_id = cross[META_USER][0]  # a user with (user, category) rows
    user = features.user(user_id)
    items = features.items["_item"].to_list()
    specs = model_inputs(schema, "dlrm")
    arrays = features.ranking_inputs(user, items, specs)
    for spec in specs:
        assert arrays[spec.name].shape == (len(items), *spec.shape) and arrays[spec.name].dtype == spec.numpy_dtype
    user_specs = tuple(s for s in specs if s.name in features.users.columns)
    for name, value in serving_inputs(features.users.filter(pl.col(META_USER) == user_id), user_specs).items():
        assert (arrays[name] == value).all(), name  # the user's row on every candidate
    item_specs = tuple(s for s in specs if s.name in features.items.columns)
    for name, value in serving_inputs(features.items, item_specs).items():
        np.testing.assert_array_equal(arrays[name], value)
    assert (arrays["position"] == arrays["position"][0]).all()  # every candidate ranked as if shown first
    mine = dict(cross.filter(pl.col(META_USER) == user_id).select(META_CATEGORY, "user_category_share").iter_rows())
    default = encoded_default(features.encoders, schema["user_category_share"], 0.0)
    expected = [mine.get(features.category.get(i), default) for i in items]
    np.testing.assert_allclose(arrays["user_category_share"][:, 0], expected, rtol=1e-6)
    assert len(set(expected)) > 2 and default in expected  # touched and untouched categories both covered
    query = features.query_inputs(user, model_inputs(schema, "two_tower.user"))
    assert all(a.shape[0] == 1 for a in query.values())


def test_each_model_version_ranks_with_its_own_datasets_features(features, schema, tiny_dataset, tmp_path):
    by_dataset = FeaturesByDataset(features)
    assert by_dataset.get(None) is features and by_dataset.get(str(tiny_dataset.path)) is features
    retrained = tmp_path / tiny_dataset.path.name  # another dataset folder (a copy: the same rows)
    shutil.copytree(tiny_dataset.path, retrained)
    other = by_dataset.get(str(retrained))
    assert other is not features and other is by_dataset.get(str(retrained))  # loaded once
    specs = model_inputs(schema, "dlrm")
    user, items = features.users[META_USER][0], features.items["_item"].head(5).to_list()
    inputs, dataset_id, stale = by_dataset.ranking_inputs(str(retrained), user, items, specs)
    expected = features.ranking_inputs(features.user(user), items, specs)
    assert dataset_id == tiny_dataset.id and not stale  # (no live store: the snapshot is not stale)
    assert all(np.array_equal(inputs[k], expected[k]) for k in expected)
    assert by_dataset.ranking_inputs(str(retrained), 10**12, items, specs) is None  # a user it does not know
    assert by_dataset.ranking_inputs(str(retrained), user, [*items, 10**12], specs) is None  # nor an item
    gone = str(tmp_path / "gone")
    with pytest.raises(DatasetUnavailable, match=r"gone.*no manifest\.json"):  # unloadable: said, not hidden
        by_dataset.get(gone)
    (tmp_path / "gone").mkdir()
    shutil.copytree(tiny_dataset.path, tmp_path / "gone", dirs_exist_ok=True)
    with pytest.raises(DatasetUnavailable):  # the failure is remembered for retry_s, not retried per request
        by_dataset.get(gone)
    by_dataset.retry_s = 0.0
    assert by_dataset.get(gone) is not None  # and tried again after it
    by_dataset.keep_only([str(retrained)])  # the rollout names only `retrained` now: the others are dropped
    assert by_dataset.loaded == sorted({str(tiny_dataset.path.resolve()), str(retrained.resolve())})


def test_online_features_refuse_a_dataset_without_its_serving_tables(features, schema, tiny_dataset, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(tiny_dataset.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["online"]["purchases"]  # as an older pipeline built it
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RecsysError, match=r"no online \['purchases'\].*rebuild it"):
        OnlineFeatures(Dataset.open(copy, schema), schema)
    bought = tiny_dataset.online("purchases")
    assert bought.height > 0 and features.purchased  # the purchase filter comes from the dataset itself
    assert all(i in features.purchased[u] for u, i in bought.iter_rows())


def test_request_ids_name_the_user_they_were_issued_to(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    key = request_key(tmp_path)
    assert request_key(tmp_path) == key and len(key) == 32  # created once, then shared
    assert (tmp_path / "request.key").stat().st_mode & 0o777 == 0o600
    ids = RequestIds(key)
    issued = [ids.issue(7) for _ in range(1000)]
    assert len(set(issued)) == 1000 and all(0 < i < 2**63 for i in issued)
    assert all(ids.issued_to(i, 7) for i in issued)
    assert not any(ids.issued_to(i, 8) for i in issued)  # another user's id
    assert not any(RequestIds(b"another key").issued_to(i, 7) for i in issued)  # another app's id
    assert {variant_of(i) for i in issued} == {"production"}
    candidate = ids.issue(7, "candidate")
    assert variant_of(candidate) == "candidate" and ids.issued_to(candidate, 7)
    rng = random.Random(0)
    assert sum(ids.issued_to(rng.getrandbits(62), 7) for _ in range(20_000)) <= 1  # guesses: 2**-22 each
    monkeypatch.setenv(KEY_ENV, "ab" * 32)
    assert request_key(tmp_path) == bytes.fromhex("ab" * 32)


def test_feedback_log_appends_in_the_shop_format_once_per_event(tmp_path):
    log = FeedbackLog(tmp_path)
    rows = [{"user_id": 7, "item_id": 3, "event_type": t, "session_id": 11, "request_id": 11, "position": 0,
             "event_id": event_id_for(11, 3, t, 0, None)} for t in ("impression", "click")]
    assert log.append(rows, "candidate") == rows
    assert log.append(rows, "candidate") == []  # a retry: this writer wrote those ids already
    assert FeedbackLog(tmp_path).append(rows[:1], "candidate") == rows[:1]  # another writer has its own file
    frame, files, *_ = read_table(tmp_path, EVENTS, FEEDBACK_INGEST)
    frame = frame.collect()
    assert len(files) == 2 and frame.height == 3
    assert frame["event_type"].to_list().count("click") == 1
    assert frame["event_id"].n_unique() == 2 and frame["timestamp"].null_count() == 0  # same ids across writers
    assert event_id_for(11, 3, "click", 0, None) != event_id_for(11, 3, "click", 1, None)


def test_request_bodies_are_limited_and_json_routes_read_json_whatever_the_content_type():
    api = FastAPI()
    api.add_middleware(RequestBody, settings=lambda: {"max_body_bytes": 100}, json_routes=("/echo",))

    @api.post("/echo")
    async def echo(body: dict) -> dict:
        return body

    @api.post("/other")
    async def other(body: dict) -> dict:
        return body

    client = TestClient(api)
    assert client.post("/echo", json={"a": 1}).json() == {"a": 1}
    form = {"content-type": "application/x-www-form-urlencoded"}  # what `curl -d` sends
    assert client.post("/echo", content=b'{"a": 2}', headers=form).json() == {"a": 2}
    assert client.post("/echo", content=b'{"a": 3}').json() == {"a": 3}  # no content type at all
    assert client.post("/other", content=b'{"a": 2}', headers=form).status_code == 422  # only the JSON routes
    r = client.post("/echo", json={"a": "x" * 200})
    assert r.status_code == 413 and "100 bytes" in r.json()["detail"]

    def chunks():
        yield b'{"a": "'
        yield b"x" * 200
        yield b'"}'

    assert client.post("/echo", content=chunks(), headers={"content-type": "application/json"}).status_code == 413


def test_every_answer_is_counted_by_route_and_status_413s_of_the_body_limit_included():
    metrics = Metrics()
    api = FastAPI()
    api.add_middleware(RequestBody, settings=lambda: {"max_body_bytes": 100}, json_routes=("/echo",))
    api.add_middleware(CountAnswers, settings=lambda: {"metrics": metrics}, routes=("/echo",))

    @api.post("/echo")
    async def echo(body: dict) -> dict:
        return body

    client = TestClient(api)
    statuses = [client.post("/echo", json=body).status_code for body in ({"a": 1}, {"a": 2}, {"a": "x" * 200})]
    statuses.append(client.get("/nowhere").status_code)
    assert statuses == [200, 200, 413, 404]
    counted = {(s.labels["route"], s.labels["status"]): s.value for s in metrics.requests.collect()[0].samples
               if s.name.endswith("_total")}
    assert counted == {("/echo", "200"): 2, ("/echo", "413"): 1, ("other", "404"): 1}


def test_serve_config_and_rayservice_manifest_are_valid_serve_configs():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from recsys.cli.serve import serve_args
    from recsys.schema import PROJECT_ROOT

    local = yaml.safe_load((PROJECT_ROOT / "serving" / "config.yaml").read_text())
    manifest = list(yaml.safe_load_all((PROJECT_ROOT / "serving" / "k8s" / "rayservice.yaml").read_text()))
    service = next(d for d in manifest if d["kind"] == "RayService")
    for raw in (local, yaml.safe_load(service["spec"]["serveConfigV2"])):
        app = ServeDeploySchema.model_validate(raw).applications[0]
        assert app.import_path == "serving.app:app_builder"
        assert {d.name for d in app.deployments} == {"Ingress"}  # (it retrieves itself)
    args, http = serve_args(str(PROJECT_ROOT / "serving" / "config.yaml"), ["max_k=7"])
    assert from_args(args).max_k == 7 and http["host"] == "127.0.0.1"


def test_request_log_writes_what_was_served_for_monitoring(tmp_path):
    import asyncio

    from recsys.eventlog.requests import REQUEST_GLOB, RequestLog

    log = RequestLog(tmp_path, flush_s=0.05)
    inputs = {"user_country": np.array([[3]]), "user_views": np.array([[1.5]], dtype=np.float32),
              "user_history": np.array([[4, 9, 0]])}

    async def serve_two():
        log.add(11, 7, "candidate", inputs, [5, 6], np.array([0.9, 0.4]), cold_start=False, degraded=False,
                total_ms=12.5)
        log.add(12, 8, "production", None, [1], None, cold_start=True, degraded=False, total_ms=1.0)
        assert not log.path.exists()  # buffered ...
        await asyncio.sleep(0.2)  # ... and written by the timer, with no further request

    asyncio.run(serve_two())
    frame = pl.read_ndjson(next(tmp_path.glob(REQUEST_GLOB)))
    assert frame["request_id"].to_list() == [11, 12] and frame["variant"].to_list() == ["candidate", "production"]
    assert frame["user_id"].to_list() == [7, 8]
    assert frame["inputs"].to_list() == [{"user_country": 3, "user_views": 1.5, "user_history": [4, 9, 0]}, None]
    assert frame["items"].to_list() == [[5, 6], [1]] and frame["scores"].to_list()[0] == [0.9, 0.4]
    assert frame["cold_start"].to_list() == [False, True]


def test_a_failed_request_log_write_loses_the_lines_not_the_answers(tmp_path):
    from recsys.eventlog.requests import RequestLog

    dropped = []
    log = RequestLog(tmp_path, max_rows=1, on_drop=dropped.append)
    log.path.mkdir()  # a directory where the file should be: every write fails
    log.add(1, 7, "production", None, [1], None, cold_start=True, degraded=False, total_ms=1.0)  # does not raise
    assert log.dropped == 1 and dropped == [1]
    log.path.rmdir()
    log.add(2, 7, "production", None, [1], None, cold_start=True, degraded=False, total_ms=1.0)
    assert [json.loads(line)["request_id"] for line in log.path.read_text().splitlines()] == [2]


def test_a_failed_feedback_append_is_cut_back_and_says_it_may_be_partial(tmp_path, monkeypatch):
    import os

    from recsys.eventlog.feedback import FeedbackWriteError

    log = FeedbackLog(tmp_path)
    row = {"user_id": 7, "item_id": 3, "event_type": "click", "session_id": 11, "request_id": 11, "position": 0}
    log.append([{**row, "event_id": 1}], "production")
    size = log.path.stat().st_size
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(FeedbackWriteError, match="No space left"):
        log.append([{**row, "event_id": 2}], "production")
    assert log.path.stat().st_size == size  # the failed append's bytes were taken off again
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert log.append([{**row, "event_id": 2}], "production")  # not remembered as written: a retry writes it
    assert [json.loads(line)["event_id"] for line in log.path.read_text().splitlines()] == [1, 2]
