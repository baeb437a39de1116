"""Steady simulated traffic on the app with live features: no input drifts beyond the shop's own day-to-day noise,
and the next dataset can train on exactly the inputs the app served (log-and-train).

The tiny shop is played forward from the end of its dataset in its own time (`recsys.retrain.shop_traffic`: the
generator's sessions, click model and follow-up events, sent to ``/recommend``, ``/feedback`` and ``/events``), so
a returning user's recency, counts and history are those the offline builder gives a training example. Served from
the snapshot instead, ``user_recency_hours`` reads the hours to the snapshot and drifts with PSI near 3.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import polars as pl
import pytest

from recsys.data.dataset import build_dataset
from recsys.data.features import META_USER
from recsys.data.generate import ShopWorld
from recsys.data.validate import validate
from recsys.eventlog.feedback import FEEDBACK_INGEST
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
    with live_app(served_models, tiny_dataset, schema, tmp_path_factory.mktemp("live_traffic"),
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
        yield monitor.evaluate(since=began), answered, app


def test_steady_traffic_with_live_features_drifts_no_more_than_the_shops_own_days(steady, tiny_dataset, schema):
    """The reference is the dataset's last days (its test split). The tiny shop's own previous days (its val split,
    as many) differ from them by sampling alone (400 users) by up to PSI 0.15: the floor. The traffic of the days
    after, served live, must be no further than 0.1 beyond twice the floor. Served from the snapshot, the recency
    alone was at PSI 3."""
    snapshot, answered, _ = steady
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


def test_log_and_train_takes_the_served_inputs_which_equal_the_offline_ones(steady, tiny_raw, tiny_cfg,
                                                                            tiny_dataset, schema, tmp_path):
    """The export plus what the app's sink wrote, built twice: computed, and with ``build.logged_inputs``. Every
    impression the app showed (and logged) takes its logged inputs; served live, those are the offline builder's
    own values, so the shards agree. (The recency, counted in whole seconds, of a lower slot, shown a few
    milliseconds after the list was asked for, may be one second more offline.)"""
    _, answered, app = steady
    validated = tmp_path / "validated"
    validate(tiny_raw, validated, tiny_cfg.validation, tiny_cfg.ingest,
             extra_events=[(app.config.event_log, FEEDBACK_INGEST)])
    root = tiny_dataset.path.parent  # where the serving dataset (whose encoders the log names) lies
    computed, _ = build_dataset(validated, root, schema, tiny_cfg.build, progress=False)
    logged, _ = build_dataset(validated, root, schema, replace(tiny_cfg.build, logged_inputs=(app.config.event_log,)),
                              progress=False)
    assert logged.id != computed.id
    account = logged.manifest.splits["ranking"]
    shown = sum(a.impressions for a in answered)
    assert sum(account[s]["from_logged_inputs"] for s in ("train", "val", "test")) == shown
    assert account["logged_inputs"]["rows"] == shown
    assert set(account["logged_inputs"]["inputs"].values()) == {"as logged"}  # the same encoders
    for split in ("train", "val", "test"):
        a, b = computed.read("ranking", split), logged.read("ranking", split)
        assert a.columns == b.columns and a.height == b.height
        for column in a.columns:
            if a[column].dtype.is_float():
                second = 1 / 3600 if column == "user_recency_hours" else 0.0  # (log1p: no more in its log)
                assert np.abs(a[column].to_numpy() - b[column].to_numpy()).max() <= second + 1e-6, column
            else:
                assert a[column].equals(b[column]), column
