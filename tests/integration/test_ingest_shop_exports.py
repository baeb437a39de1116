"""A shop's own export, from its files to a served /recommend: an impressions-and-clicks log with text ids, no
sessions, no users table and the shop's attribute names (`tests.shop_layouts`), read by the config `recsys data
init` writes; the app takes the shop's user ids and answers with its SKUs, and feedback in its ids comes back in."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import polars as pl
import pytest

from recsys.cli import main as recsys_main
from recsys.config import DataConfig, load_config
from recsys.data.dataset import build_dataset
from recsys.data.validate import validate
from recsys.deploy import server
from recsys.deploy.ports import free_port
from recsys.eventlog.feedback import FEEDBACK_INGEST
from recsys.ids import IdMap, export_id_maps, text_code
from recsys.registry.versions import register
from recsys.serving_config import ServingConfig
from recsys.training.job import run
from serving.launch import run_app
from tests.integration.conftest import tiny_train_config
from tests.shop_layouts import impressions_and_clicks

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(local_ray, tiny_raw, schema, tmp_path_factory):
    work = tmp_path_factory.mktemp("shop_export")
    shop, _ = impressions_and_clicks(tiny_raw, work / "shop")
    # as a new user starts: the config `recsys data init` writes, used as it is
    assert recsys_main(["data", "init", "--source", str(shop), "--out", str(work / "data.yaml")]) == 0
    cfg = load_config(DataConfig, work / "data.yaml")
    report = validate(shop, work / "validated", cfg.validation, cfg.ingest)
    dataset, _ = build_dataset(work / "validated", work / "datasets", schema, cfg.build, progress=False)
    repo = work / "triton_models"
    overrides = {"dlrm": {"workers": 0}, "two-tower": {"batch_size": 128, "workers": 0}}
    for task in ("dlrm", "two-tower"):
        trained = run(task, tiny_train_config(dataset, work / "train", **overrides[task]), progress=False)
        # (what is tested here is the shop's ids end to end; the floor is tested in tests/integration/test_registry.py)
        assert recsys_main(["export", str(trained.path), "--out", str(work / task), "--repository", str(repo),
                            "--allow-below-floor", "ids test: a 1-epoch tiny model"]) == 0
    triton = server.start(repo, ["dlrm"], run_dir=work / "triton")
    config = ServingConfig(dataset=str(dataset.path), retrieval_export=str(work / "two-tower"),
                           triton_url=triton.grpc_url, event_log=str(work / "events"), port=free_port(),
                           rollout_file=str(work / "rollout.json"), rank_deadline_s=5.0, retrieve_deadline_s=10.0)
    running = run_app(config, "127.0.0.1", proxy_port=free_port(), run_dir=work / "run")
    try:
        yield {"work": work, "shop": shop, "cfg": cfg, "report": report, "dataset": dataset, "url": running.url,
               "config": config}
    finally:
        running.stop()
        server.stop(work / "triton")


def test_the_export_gets_in_with_nothing_converted_by_hand(served):
    report, dataset = served["report"], served["dataset"]
    assert report.ids["user_id"] == "text" and report.ids["item_id"] == "text"
    assert report.derived == {"events": ["event_id", "session_id"], "users": ["table"]}
    assert all(t.bad == 0 for t in report.tables.values()), report.summary()
    # no product views in this log: each click opened a product page (`with_implied_views`), the retriever's
    # positives are those views, one per click
    log = pl.read_csv(served["shop"] / "impressions.csv")
    splits = dataset.manifest.splits
    assert splits["retrieval"]["positive_event_types"] == ["view"]
    assert sum(splits["retrieval"][s]["rows"] for s in ("train", "val", "test")) == \
        log.filter(pl.col("action") == "click").height
    assert dataset.manifest.splits["ranking"]["train"]["rows"] > 0
    assert sum(splits["ranking"][s]["rows"] for s in ("train", "val", "test")) == \
        log.filter(pl.col("action") == "impression").height


def test_recommend_takes_the_shops_user_ids_and_answers_with_its_skus(served):
    import httpx

    log = pl.read_csv(served["shop"] / "impressions.csv")
    skus = set(pl.read_csv(served["shop"] / "products.csv")["sku"])
    user = log["user"][0]
    with httpx.Client(base_url=served["url"], trust_env=False, timeout=60.0) as http:
        answer = http.post("/recommend", json={"user_id": user, "k": 5}).json()
        assert answer["user_id"] == user and not answer["cold_start"] and not answer["degraded"], answer
        items = [i["item_id"] for i in answer["items"]]
        assert len(items) == 5 and set(items) <= skus, items
        excluded = http.post("/recommend", json={"user_id": user, "k": 5, "exclude": items[:2]}).json()
        assert not set(items[:2]) & {i["item_id"] for i in excluded["items"]}
        # feedback in the shop's ids: accepted, and logged as the pipeline codes them
        events = [{"item_id": items[0], "event_type": "impression", "position": 0},
                  {"item_id": items[0], "event_type": "click", "position": 0}]
        fed = http.post("/feedback", json={"request_id": answer["request_id"], "user_id": user, "events": events})
        assert fed.status_code == 200 and fed.json()["accepted"] == 2, fed.text
        unknown = http.post("/feedback", json={"request_id": answer["request_id"], "user_id": user,
                                               "events": [{"item_id": "SKU-nope", "event_type": "click"}]})
        assert unknown.status_code == 404 and "SKU-nope" in unknown.text
        stranger = http.post("/recommend", json={"user_id": "someone-new", "k": 3}).json()
        assert stranger["cold_start"] and {i["item_id"] for i in stranger["items"]} <= skus
    # the next validation reads the feedback log beside the export: the same codes, the click on a known item
    again = validate(served["shop"], served["work"] / "validated-again", served["cfg"].validation,
                     served["cfg"].ingest, extra_events=[(served["config"].event_log, FEEDBACK_INGEST)])
    assert again.tables["events"].bad == 0, again.summary()
    events = pl.read_parquet(served["work"] / "validated-again" / "events.parquet")
    fed_back = events.filter(pl.col("request_id") == int(answer["request_id"]))
    assert fed_back["user_id"].unique().to_list() == [text_code(user)]
    assert IdMap.read(served["work"] / "validated-again", "item_id").decode(fed_back["item_id"][0]) == items[0]


def test_the_exports_and_the_registry_carry_the_shops_id_maps(served, tmp_path):
    skus = set(pl.read_csv(served["shop"] / "products.csv")["sku"])
    users = set(pl.read_csv(served["shop"] / "impressions.csv")["user"])
    text = {"user_id": "text", "item_id": "text"}
    for task, model in (("dlrm", "dlrm"), ("two-tower", "query_tower")):
        moved = shutil.copytree(served["work"] / task, tmp_path / task)  # the export alone, away from its dataset
        maps = export_id_maps(moved)
        assert {c: m.kind for c, m in maps.items()} == text
        assert {maps["item_id"].decode(text_code(s)) for s in skus} == skus
        assert {maps["user_id"].decode(text_code(u)) for u in users} == users
        graph = onnx.load(str(moved / model / "model.onnx"))
        assert json.loads({p.key: p.value for p in graph.metadata_props}["id_kinds"]) == text
    indexed = np.load(tmp_path / "two-tower" / "items" / "item_ids.npy")  # what the ANN index answers with
    assert {export_id_maps(tmp_path / "two-tower")["item_id"].decode(int(c)) for c in indexed} <= skus
    version = register(tmp_path / "two-tower", registry=f"sqlite:///{tmp_path / 'mlflow.db'}",
                       allow_below_floor="ids test: a 1-epoch tiny model")
    assert json.loads(version.tags["id_kinds"]) == text
    assert IdMap.read(version.tags["id_maps"], "item_id").decode(text_code(min(skus))) == min(skus)
