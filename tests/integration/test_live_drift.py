"""Steady simulated traffic on the app with live features: no input drifts beyond the shop's own day-to-day noise.

The tiny shop is played forward from the end of its dataset in its own time (`recsys.retrain.shop_traffic`: the
generator's sessions, click model and follow-up events, sent to ``/recommend``, ``/feedback`` and ``/events``), so
a returning user's recency, counts and history are those the offline builder gives a training example. Served from
the snapshot instead, ``user_recency_hours`` reads the hours to the snapshot and drifts with PSI near 3.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest

from recsys.data.features import META_USER
from recsys.data.generate import ShopWorld
from recsys.monitoring.drift import feature_drift
from recsys.monitoring.monitor import Monitor, reference_profile
from recsys.retrain.shop_traffic import ShopTraffic, live_store_settle, sessions_per_day
from recsys.store import server as store_server
from tests.integration.live_app import AUTH, live_app

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REQUESTS = 360  # lists answered: about 3 days of the tiny shop, as many as its test split holds


@pytest.fixture(scope="module")
def steady(local_ray, served_models, tiny_dataset, tiny_cfg, tiny_raw, schema, tmp_path_factory):
    with live_app(served_models, tiny_dataset, schema, tmp_path_factory.mktemp("live_drift"),
                  ingress_replicas=1) as app:
        began = datetime.now(UTC)
        world = ShopWorld(tiny_cfg.generator)
        with httpx.Client(base_url=app.url, trust_env=False, timeout=60.0) as client:
            traffic = ShopTraffic(world, client, world.end_s, sessions_per_day(tiny_raw), headers=AUTH,
                                  settle=live_store_settle(store_server.connect(app.store_dir)),
                                  known_users=set(app.features.users[META_USER].to_list()))
            answered = traffic.run(REQUESTS)
        monitor = Monitor(app.config.event_log, reference_profile(tiny_dataset, schema, "test"),
                          ROOT / "configs" / "monitoring" / "alerts.yaml", window=timedelta(hours=1))
        deadline = time.monotonic() + 60
        while monitor.requests.refresh() is None or monitor.requests.rows_read < REQUESTS:
            assert time.monotonic() < deadline, "the app did not log every answer"
            time.sleep(0.1)
        yield monitor.evaluate(since=began), answered


def test_steady_traffic_with_live_features_drifts_no_more_than_the_shops_own_days(steady, tiny_dataset, schema):
    """The reference is the dataset's last days (its test split). The tiny shop's own previous days (its val split,
    as many) differ from them by sampling alone (400 users) by up to PSI 0.15: the floor. The traffic of the days
    after, served live, must be no further than 0.1 beyond twice the floor. Served from the snapshot, the recency
    alone was at PSI 3."""
    snapshot, answered = steady
    assert len(answered) == REQUESTS and sum(a.clicks for a in answered) > 0
    assert snapshot.metrics["drift.rows"] == REQUESTS
    psi = {k.removeprefix("drift.psi."): v for k, v in snapshot.metrics.items() if k.startswith("drift.psi.")}
    inputs = [f.name for f in schema.used_by("two_tower.user")]  # what the answers log
    profile = reference_profile(tiny_dataset, schema, "test")
    floor = {d.name: d.psi for d in feature_drift(profile, pl.scan_parquet(tiny_dataset.shards("ranking", "val")),
                                                  [n for n in inputs if n in profile])}
    print({k: (round(v, 3), round(floor[k], 3)) for k, v in sorted(psi.items())})
    assert set(psi) == set(floor), (sorted(psi), sorted(floor))
    assert all(psi[k] < 0.1 + 2 * floor[k] for k in psi), {k: (psi[k], floor[k]) for k in psi}
