"""Skew-free by construction, shown: a log replayed through a real Valkey, read as of many instants, gives every
model input the offline point-in-time builder gives an example at that instant."""

from __future__ import annotations

import random
from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from redis.cluster import RedisCluster

from recsys.data.features import EVENT_ID, ITEM, POSITION, TS, TYPE, USER, F, implies_views
from recsys.data.reencoding import builder_with
from recsys.data.state_spec import StateSpec
from recsys.export.signature import tensor_specs
from recsys.online.features import OnlineFeatures
from recsys.online.live import LiveFeatures
from recsys.schema import Kind
from recsys.store import cluster, server
from recsys.store.state import StateLayout, StateReader, StateWriter, StoreEvent

pytestmark = pytest.mark.integration

INSTANTS, CANDIDATES = 40, 12


@pytest.fixture(params=["server", "cluster"])
def store(request, tmp_path):
    """One Valkey, or a real 3-node Valkey Cluster (every event's script on the node of its hash tag, a request's
    reads across the nodes of its candidates)."""
    if request.param == "server":
        server.start(tmp_path)
        yield server.connect(tmp_path)
        server.stop(tmp_path)
        return
    cluster.start_cluster(tmp_path, nodes=3)
    try:
        client = server.client_for(cluster.cluster_url(tmp_path))
        assert isinstance(client, RedisCluster) and len(client.get_primaries()) == 3
        yield client
    finally:
        cluster.stop_cluster(tmp_path, nodes=3)


def _offline(builder, features, user, items, at):
    rows = pl.DataFrame({USER: [user] * len(items), ITEM: items, TS: [at] * len(items), POSITION: [0] * len(items)},
                        schema_overrides={TS: pl.Datetime("us", "UTC"), POSITION: pl.Int32})
    return builder.add(rows.lazy(), features).select([F + f.name for f in features]).collect()


def _assert_same(live: dict[str, np.ndarray], offline: pl.DataFrame, features, where: str) -> int:
    """The arrays served (``live``) against the offline builder's encoded columns, feature by feature."""
    specs = {s.name: s for s in tensor_specs(features)}
    for f in features:
        spec, a, b = specs[f.name], live[f.name], offline[F + f.name].to_numpy()
        assert a.dtype == spec.numpy_dtype and a.shape == (offline.height, *spec.shape), (where, f.name, a.shape)
        if f.kind == Kind.DENSE:
            assert np.isnan(a.reshape(-1)).tolist() == np.isnan(b.astype(np.float64)).tolist(), (where, f.name)
            np.testing.assert_allclose(a.reshape(-1), b, rtol=0, atol=1e-6, err_msg=f"{where}: {f.name}")
        else:
            assert a.reshape(offline.height, -1).tolist() == np.stack(b).reshape(offline.height, -1).tolist(), \
                (where, f.name, a.tolist(), b.tolist())
    return len(features)


def test_replayed_log_gives_the_offline_inputs_at_every_instant(store, tiny_dataset, schema):
    builder = builder_with(tiny_dataset, schema, tiny_dataset.encoders(schema))
    online = OnlineFeatures(tiny_dataset, schema)
    layout = StateLayout(StateSpec.of(schema), dedupe_window_s=3600)
    writer = StateWriter(store, layout, online.category)
    live = LiveFeatures(online, StateReader(store, layout))
    assert not tiny_dataset.manifest.online["implied_views"] and not implies_views(builder.events)

    events = builder.events.sort(TS, EVENT_ID)
    impressions = events.filter(pl.col(TYPE) == "impression")
    rng = random.Random(5)
    picks = sorted(rng.sample(range(impressions.height), INSTANTS))
    items = online.items[online.items.columns[0]].to_list()
    replayed, compared, applied, seen = 0, 0, 0, []
    for n, row in enumerate(impressions[picks].iter_rows(named=True)):
        at = row[TS] + timedelta(microseconds=n % 2)  # on an impression's instant and just after it
        batch = events.slice(replayed).filter(pl.col(TS) < at)
        applied += writer.apply(StoreEvent.rows(batch))
        replayed += batch.height
        candidates = [row[ITEM], *rng.sample(items, CANDIDATES - 1)]
        user = live.user(row[USER], at)
        served = live.ranking_inputs(user, candidates, tensor_specs(live.features["dlrm"]))
        seen.append(pl.DataFrame({f.name: served[f.name].reshape(len(candidates), -1)[:, 0]
                                  for f in live.features["dlrm"]}))
        compared += _assert_same(served, _offline(builder, live.features["dlrm"], row[USER], candidates, at),
                                 live.features["dlrm"], f"ranking at {at}")
        user_f = live.features["two_tower.user"]
        query = live.query_inputs(user, tensor_specs(user_f))
        compared += _assert_same(query, _offline(builder, user_f, row[USER], [row[ITEM]], at), user_f,
                                 f"query at {at}")
    assert replayed > events.height // 2 and applied > replayed  # most of the log, most events on both sides
    assert compared == INSTANTS * (len(live.features["dlrm"]) + len(live.features["two_tower.user"]))
    stateful = [f for f in live.features["dlrm"] if f.op in (
        "user_history", "user_category_share", "item_event_count", "item_rate", "user_recency_hours",
        "user_event_count", "user_tenure_days")]
    assert len({f.op for f in stateful}) == 7
    if isinstance(store, RedisCluster):  # the state spread over the nodes, each event's sides where they belong
        assert all(node.redis_connection.dbsize() > 100 for node in store.get_primaries())
    values = pl.concat(seen)
    for f in stateful:  # the state compared was not all zeros: every stateful input took many values
        assert values[f.name].n_unique() >= 3, f.name
