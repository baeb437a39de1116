"""Logs without impressions, from `recsys data init` to a served /recommend: a RetailRocket-shaped events file
(integer ids, epoch milliseconds), MovieLens-shaped ratings read as views, and Amazon-shaped JSON-lines reviews
(text ids with leading zeros). There is nothing to rank from (no impressions, so no ranker): the app serves the
two-tower retrieval order with ``ranker_model: ""``, in the shop's own ids, and never waits for a Triton.

It runs before the modules that share the session app (`conftest.app`): it stops Ray Serve when it ends, and
that app with it."""

from __future__ import annotations

import time

import httpx
import polars as pl
import pytest

from recsys.cli import main as recsys_main
from recsys.config import DataConfig, load_config
from recsys.data.dataset import build_dataset
from recsys.data.validate import validate
from recsys.deploy.ports import free_port
from recsys.serving_config import ServingConfig
from recsys.training.job import run
from serving.launch import run_app
from tests import shop_layouts
from tests.integration.conftest import tiny_train_config

pytestmark = pytest.mark.integration

# layout -> (the events file and its user and item columns, the catalogue file and its item column, or None)
LAYOUTS = {"retailrocket_events": (("events.csv", "visitorid", "itemid"), None),
           "movielens_ratings": (("ratings.csv", "userId", "movieId"), ("movies.csv", "movieId")),
           "json_reviews": (("reviews.jsonl", "reviewerID", "asin"), ("meta.jsonl", "asin"))}


def _read(path):
    # (ids as the file spells them: a JSON-lines asin "0000000042" stays text, a CSV's integers stay integers)
    return pl.read_ndjson(path) if path.suffix == ".jsonl" else pl.read_csv(path)


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def served(request, local_ray, tiny_raw, schema, tmp_path_factory):
    layout = request.param
    work = tmp_path_factory.mktemp(layout)
    shop = getattr(shop_layouts, layout)(tiny_raw, work / "shop")
    assert recsys_main(["data", "init", "--source", str(shop), "--out", str(work / "data.yaml")]) == 0
    cfg = load_config(DataConfig, work / "data.yaml")
    validate(shop, work / "validated", cfg.validation, cfg.ingest)
    dataset, _ = build_dataset(work / "validated", work / "datasets", schema, cfg.build, progress=False)
    trained = run("two-tower", tiny_train_config(dataset, work / "train", batch_size=128, workers=0), progress=False)
    assert recsys_main(["export", str(trained.path), "--out", str(work / "two-tower"),
                        "--allow-below-floor", "serving test: a 1-epoch tiny model"]) == 0
    # no Triton anywhere: its address is a port nothing listens on, and nothing may call it
    config = ServingConfig(dataset=str(dataset.path), retrieval_export=str(work / "two-tower"), ranker_model="",
                           triton_url=f"127.0.0.1:{free_port()}", event_log=str(work / "events"), port=free_port(),
                           rollout_file=str(work / "rollout.json"), retrieve_deadline_s=10.0)
    running = run_app(config, "127.0.0.1", proxy_port=free_port(), run_dir=work / "run")
    try:
        yield {"layout": layout, "shop": shop, "url": running.url}
    finally:
        running.stop()


def test_the_retrieval_order_is_served_in_the_shops_ids(served):
    (events_file, user_column, item_column), catalogue = LAYOUTS[served["layout"]]
    events = _read(served["shop"] / events_file)
    known = set(events[item_column]) | (set(_read(served["shop"] / catalogue[0])[catalogue[1]]) if catalogue else set())
    user = events[user_column][0]
    with httpx.Client(base_url=served["url"], trust_env=False, timeout=60.0) as http:
        for _ in range(300):  # (the balancer may not yet have marked the new replica up: it answers 503 till then)
            if (probe := http.get("/readyz")).status_code != 503:
                break
            time.sleep(0.2)
        ready = probe.json()
        assert ready["ready"] and "triton" not in ready["checks"], ready
        answer = http.post("/recommend", json={"user_id": user, "k": 10}).json()
        assert answer["user_id"] == user and not answer["cold_start"] and not answer["degraded"], answer
        assert set(answer["model_versions"]) == {"dataset", "retrieval"}, answer
        items = [i["item_id"] for i in answer["items"]]
        assert len(items) == 10 and set(items) <= known, items  # the shop's ids, typed as its files have them
        scores = [i["score"] for i in answer["items"]]
        assert all(isinstance(s, float) for s in scores) and scores == sorted(scores, reverse=True), scores
        excluded = http.post("/recommend", json={"user_id": user, "k": 10, "exclude": items[:3]}).json()
        assert not set(items[:3]) & {i["item_id"] for i in excluded["items"]}
        assert [i["item_id"] for i in excluded["items"]][:7] == items[3:10]  # the same order, less what was excluded
        stranger = http.post("/recommend", json={"user_id": "nobody-here", "k": 3})
        if isinstance(user, int):  # an integer shop: a text id cannot be one of its users
            assert stranger.status_code == 422 and "body.user_id" in stranger.text
        else:
            assert stranger.json()["cold_start"] and {i["item_id"] for i in stranger.json()["items"]} <= known
