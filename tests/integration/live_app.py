"""The app on live features, as the integration tests start it: a real valkey-server bootstrapped from a dataset,
the feature consumer and the event-log sink reading its stream (threads of the test process), and the Ray Serve app
reading its state; writes need ``KEY``."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from recsys.deploy.ports import free_port
from recsys.online.features import OnlineFeatures
from recsys.serving_config import StoreConfig
from recsys.store import server as store_server
from recsys.store.consumer import FeatureConsumer, LiveContext, bootstrap
from recsys.store.sink import EventSink
from recsys.store.stream import EventStream
from serving.launch import run_app
from tests.integration.conftest import serving_config

KEY = "shop-key-" + "x" * 24
AUTH = {"Authorization": f"Bearer {KEY}"}


class LiveApp:
    def __init__(self, url, config, store_dir, dataset, features):
        self.url, self.config, self.store_dir, self.dataset, self.features = url, config, store_dir, dataset, features

    def drained(self, name: str, limit_s: float = 60.0) -> None:
        """Until the group has acknowledged every entry on the stream (a safety limit only)."""
        deadline = time.monotonic() + limit_s
        stream = EventStream(store_server.connect(self.store_dir))
        while not stream.caught_up(name):
            assert time.monotonic() < deadline, f"the {name} group did not catch up"
            time.sleep(0.005)


def _workers(store_dir, context, event_log, stop) -> list[threading.Thread]:
    consumer = FeatureConsumer(store_server.connect(store_dir), context, block_ms=100)
    sink = EventSink(store_server.connect(store_dir), event_log, block_ms=100)
    threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in (consumer, sink)]
    for t in threads:
        t.start()
    return threads


@contextlib.contextmanager
def live_app(models, dataset, schema, work: Path, **overrides) -> Iterator[LiveApp]:
    """The live app on ``dataset`` with its store, consumer and sink under ``work``; stopped on exit."""
    store_dir = work / "store"
    store_server.start(store_dir, appendfsync="always")
    context = LiveContext.of(dataset, schema)
    assert bootstrap(store_server.connect(store_dir), context, dataset) > 0
    stop = threading.Event()
    threads = _workers(store_dir, context, work / "events", stop)
    (work / "api_keys").write_text(f"# the shop's keys\n{KEY}\n")
    config = serving_config(models, dataset, work, **{
        "store": StoreConfig(enabled=True, run_dir=str(store_dir), timeout_s=0.5, retry_s=0.5),
        "api_keys_file": str(work / "api_keys"), "require_api_key": "true", **overrides})
    running = run_app(config, "127.0.0.1", proxy_port=free_port(), run_dir=work / "run")
    try:
        yield LiveApp(running.url, config, store_dir, dataset, OnlineFeatures(dataset, schema))
    finally:
        running.stop()
        stop.set()
        for t in threads:
            t.join(timeout=10)
        store_server.stop(store_dir)
