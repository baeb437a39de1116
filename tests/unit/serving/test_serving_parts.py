"""The serving application's parts without Ray: config, online features, the event log, the body limit."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from recsys.config import ConfigError, IngestConfig
from recsys.data.features import META_USER
from recsys.data.ingest import read_table
from recsys.events import EVENTS
from recsys.export.serving import serving_inputs
from serving import app as serving_app
from serving.config import ServingConfig, from_args
from serving.features import OnlineFeatures, model_inputs
from serving.feedback import EVENT_GLOB, EventLog


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


def test_ranking_inputs_shapes_and_the_exporters_arrays(features, schema):
    user = features.user(features.users[META_USER][0])
    items = features.items["_item"].head(9).to_list()
    specs = model_inputs(schema, "dlrm")
    rows = features.ranking_rows(user, items)
    arrays = features.ranking_inputs(user, items, specs)
    expected = serving_inputs(rows, specs)
    assert arrays.keys() == expected.keys()
    for spec in specs:
        assert arrays[spec.name].shape == (9, *spec.shape) and arrays[spec.name].dtype == expected[spec.name].dtype
        np.testing.assert_array_equal(arrays[spec.name], expected[spec.name])
    assert (arrays["position"] == arrays["position"][0]).all()  # every candidate ranked as if shown first
    query = features.query_inputs(user, model_inputs(schema, "two_tower.user"))
    assert all(a.shape[0] == 1 for a in query.values())


def test_event_log_appends_in_the_shop_format(tmp_path):
    log = EventLog(tmp_path)
    rows = [{"user_id": 7, "item_id": 3, "event_type": "impression", "session_id": 11, "request_id": 11,
             "position": 0},
            {"user_id": 7, "item_id": 3, "event_type": "click", "session_id": 11, "request_id": 11, "position": 0}]
    assert log.append(rows) == 2
    assert EventLog(tmp_path).append(rows[:1]) == 1  # a second writer (replica, restart) has its own file
    frame, files = read_table(tmp_path, EVENTS, IngestConfig(events=EVENT_GLOB))
    frame = frame.collect()
    assert len(files) == 2 and frame.height == 3
    assert frame["event_type"].to_list().count("click") == 1
    assert frame["event_id"].n_unique() == 3 and frame["timestamp"].null_count() == 0


def test_body_limit_refuses_large_bodies(monkeypatch):
    monkeypatch.setitem(serving_app.LIMITS, "max_body_bytes", 100)
    api = FastAPI()
    api.add_middleware(serving_app.BodyLimit)

    @api.post("/echo")
    async def echo(body: dict) -> dict:
        return body

    client = TestClient(api)
    assert client.post("/echo", json={"a": 1}).json() == {"a": 1}
    r = client.post("/echo", json={"a": "x" * 200})
    assert r.status_code == 413 and "100 bytes" in r.json()["detail"]

    def chunks():
        yield b'{"a": "'
        yield b"x" * 200
        yield b'"}'

    assert client.post("/echo", content=chunks(), headers={"content-type": "application/json"}).status_code == 413


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
        assert {d.name for d in app.deployments} == {"Ingress", "Retriever", "RankerClient"}
    args, http = serve_args(str(PROJECT_ROOT / "serving" / "config.yaml"), ["max_k=7"])
    assert from_args(args).max_k == 7 and http["host"] == "127.0.0.1"
