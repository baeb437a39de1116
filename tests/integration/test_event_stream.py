"""The event stream into the live state, through crashes: a replayed log's events are all counted, none twice,
when the consumer or Valkey itself is killed with SIGKILL mid-stream (real valkey-server, real `recsys store
consume` processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from redis.cluster import RedisCluster

from recsys.data.features import EVENT_ID, ITEM, TS, TYPE, USER
from recsys.data.state_spec import StateSpec, count_column
from recsys.store import cluster, server
from recsys.store.consumer import GROUP, FeatureConsumer, LiveContext
from recsys.store.replay import replay
from recsys.store.stream import EventStream

pytestmark = pytest.mark.integration

DAY_S = 86_400.0
EVENTS = 12_000  # the first part of the tiny log: every user's and item's exact counts, in seconds


def _until(condition, what: str, limit_s: float = 180.0, every_s: float = 0.02) -> None:
    """Poll ``condition`` (a safety limit only: the scenario is driven by counts)."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(every_s)


def _group(client) -> dict:
    """The features group's counters ({} until its consumer has created it)."""
    return EventStream(client).group(GROUP)


def _expected(events: pl.DataFrame, spec: StateSpec) -> tuple[dict, dict, dict]:
    """Per user and per item, every counter the state keeps, counted with Polars from the log; the purchases."""
    def counts(key: str, type_sets) -> dict:
        aggs = [pl.col(TYPE).cast(pl.String).is_in(list(t)).sum().alias(count_column(t)) for t in type_sets]
        rows = events.group_by(key).agg(aggs).iter_rows(named=True)
        found = {r[key]: {k: v for k, v in r.items() if k != key and v} for r in rows}
        return {k: v for k, v in found.items() if v}

    bought = events.filter(pl.col(TYPE) == "purchase").group_by(USER).agg(pl.col(ITEM).unique())
    return (counts(USER, sorted(spec.user_counters)), counts(ITEM, sorted(spec.item_counters)),
            {u: set(i) for u, i in bought.iter_rows()})


def _stored(client, layout, users, items) -> tuple[dict, dict, dict]:
    def read(keys) -> list[dict]:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        return [{k.decode(): int(v) for k, v in h.items() if not k.startswith(b"last:")} for h in pipe.execute()]

    pipe = client.pipeline(transaction=False)
    for u in users:
        pipe.smembers(layout.user_key(u, "bought"))
    bought = {u: {int(i) for i in s} for u, s in zip(users, pipe.execute(), strict=True) if s}
    user_counts = dict(zip(users, read([layout.user_key(u, "n") for u in users]), strict=True))
    item_counts = dict(zip(items, read([layout.item_key(i, "n") for i in items]), strict=True))
    return ({u: c for u, c in user_counts.items() if c}, {i: c for i, c in item_counts.items() if c}, bought)


@pytest.fixture
def log_and_context(tiny_dataset, tiny_validated, schema):
    events = pl.read_parquet(tiny_validated / "events.parquet").sort(TS, EVENT_ID).head(EVENTS)
    return events, LiveContext.of(tiny_dataset, schema, dedupe_window_s=DAY_S)


def _assert_counted_once(client, events, context) -> None:
    spec, layout = context.layout.spec, context.layout
    users, items = events[USER].unique().to_list(), events[ITEM].unique().to_list()
    assert _stored(client, layout, users, items) == _expected(events, spec)


def test_consumer_killed_mid_stream_loses_nothing_and_counts_nothing_twice(tmp_path, tiny_dataset,
                                                                           log_and_context):
    events, context = log_and_context
    server.start(tmp_path, appendfsync="always")
    try:
        client = server.connect(tmp_path)
        stream = EventStream(client)
        assert replay(stream, tiny_dataset.path, limit=EVENTS) == events.height
        command = [str(Path(sys.executable).with_name("recsys")), "store", "consume", "--run-dir", str(tmp_path),
                   "--dataset", str(tiny_dataset.path), "--batch", "100", "--dedupe-window", str(DAY_S)]
        first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _until(lambda: (_group(client).get("entries-read") or 0) >= events.height // 4, "a quarter consumed")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        read_at_kill = _group(client)["entries-read"]
        assert read_at_kill < events.height  # killed mid-stream
        # a client re-sending its last 200 events (within the dedupe window): counted once too
        stream.publish(events.tail(200).iter_rows(named=True))
        second = subprocess.run([*command, "--idle-exit", "2"], capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr[-2000:]
        group = _group(client)
        assert group["pending"] == 0 and group["lag"] == 0
        _assert_counted_once(client, events, context)
    finally:
        server.stop(tmp_path)


def test_valkey_killed_mid_stream_loses_nothing_and_counts_nothing_twice(tmp_path, tiny_dataset,
                                                                         log_and_context):
    events, context = log_and_context
    info = server.start(tmp_path, appendfsync="always")
    try:
        client = server.connect(tmp_path)
        stream = EventStream(client)
        assert replay(stream, tiny_dataset.path, limit=EVENTS) == events.height
        consumer = FeatureConsumer(server.connect(tmp_path), context, batch=100)
        stop = threading.Event()
        worker = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
        worker.start()
        _until(lambda: consumer.entries >= events.height // 4, "a quarter consumed", every_s=0.005)
        os.kill(info.pid, signal.SIGKILL)
        killed_at = consumer.entries
        assert killed_at < events.height
        server.start(tmp_path, port=info.port, appendfsync="always")  # the same folder: its AOF is reloaded
        _until(lambda: stream.caught_up("features"), "the rest consumed")
        stop.set()
        worker.join(timeout=30)
        _assert_counted_once(client, events, context)
    finally:
        server.stop(tmp_path)


def test_a_valkey_cluster_counts_every_event_once_across_its_nodes(tmp_path, tiny_dataset, log_and_context):
    """The same stream and consumer on a real 3-node Valkey Cluster, named by the URL of one node: each event's
    user and item sides applied on the nodes of their hash tags, a consumer killed mid-stream, every count exact."""
    events, context = log_and_context
    cluster.start_cluster(tmp_path, nodes=3)
    try:
        url = cluster.cluster_url(tmp_path)
        client = server.client_for(url)
        assert isinstance(client, RedisCluster)
        stream = EventStream(client)
        assert replay(stream, tiny_dataset.path, limit=EVENTS) == events.height
        command = [str(Path(sys.executable).with_name("recsys")), "store", "consume", "--url", url,
                   "--dataset", str(tiny_dataset.path), "--batch", "100", "--dedupe-window", str(DAY_S)]
        first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _until(lambda: (_group(client).get("entries-read") or 0) >= events.height // 4, "a quarter consumed")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        assert _group(client)["entries-read"] < events.height  # killed mid-stream
        second = subprocess.run([*command, "--idle-exit", "2"], capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr[-2000:]
        assert _group(client)["pending"] == 0 and _group(client)["lag"] == 0
        _assert_counted_once(client, events, context)
        assert all(node.redis_connection.dbsize() > 100 for node in client.get_primaries())
    finally:
        cluster.stop_cluster(tmp_path, nodes=3)
