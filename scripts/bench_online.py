"""Benchmark the live feature store on this machine: freshness, lookups, consumer throughput and memory.

One run, side by side, on a real valkey-server (``recsys store start``, appendfsync everysec) bootstrapped from a
dataset, with the feature consumer as its own process (``recsys store consume``):

* **event to feature visible**: events published at a steady ``--rate`` (events/s, each stamped with the wall
  clock) for ``--duration`` seconds; an event is visible once the consumer has applied it and advanced the store's
  clock past it (a prober reads the clock every millisecond). p50 / p99 / max over every event.
* **lookups for one request**: the user's state and ``--candidates`` candidates' state (the two round trips serving
  makes), and the whole live path a request takes (state, then the query tower's and the ranker's inputs encoded
  with the offline expressions), against the snapshot path (the dataset's online tables, in memory) on the same
  users and candidates.
* **consumer throughput**: ``--backlog`` events queued first, then the time the consumer takes to apply them.
* **memory**: the store's ``used_memory`` per user and per item after the bootstrap (and what the stream holds).

    python scripts/bench_online.py [--dataset runs/datasets/<id>] [--rate 1000] [--duration 20]

Without ``--dataset`` the tiny shop is generated and built first. Not a test: the figures depend on the machine
and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from recsys.store.state import from_us  # noqa: E402  (after the path is set)
from recsys.store.stream import EventStream  # noqa: E402


def percentiles(values: list[float]) -> dict[str, float]:
    return {f"p{q}": round(float(np.percentile(values, q)), 3) for q in (50, 99)} | {
        "max": round(float(max(values)), 3), "n": len(values)}


def tiny_dataset(work: Path):
    from recsys.config import DataConfig, load_config
    from recsys.data.dataset import build_dataset
    from recsys.data.generate import generate
    from recsys.data.validate import validate
    from recsys.schema import load_schema

    cfg = load_config(DataConfig, ROOT / "configs" / "data" / "tiny.yaml")
    generate(cfg.generator, work / "raw", progress=False)
    validate(work / "raw", work / "validated", cfg.validation, cfg.ingest)
    return build_dataset(work / "validated", work / "datasets", load_schema(), cfg.build, progress=False)[0]


def consumer_process(store_dir: Path, dataset: Path, log: Path) -> subprocess.Popen:
    command = [str(Path(sys.executable).with_name("recsys")), "store", "consume", "--run-dir", str(store_dir),
               "--dataset", str(dataset), "--batch", "500"]
    return subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_drained(client, group: str = "features", limit_s: float = 600) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if EventStream(client).caught_up(group):
            return
        time.sleep(0.01)
    raise TimeoutError(f"the {group} group did not drain in {limit_s} s")


def synthetic_events(users: list[int], items: list[int], n: int, first_id: int, start_us: int | None = None,
                     step_us: int = 1) -> list[dict]:
    rng = random.Random(first_id)
    types = ["view"] * 6 + ["impression"] * 10 + ["click", "add_to_cart", "purchase"]
    out = []
    for k in range(n):
        ts = start_us + k * step_us if start_us is not None else None
        out.append({"event_id": first_id + k, "timestamp": ts, "user_id": rng.choice(users),
                    "item_id": rng.choice(items), "event_type": rng.choice(types), "session_id": 1})
    return out


def freshness(client, users, items, rate: float, duration: float) -> dict:
    """Publish at ``rate`` with wall-clock timestamps; an event is visible when the store's clock passes it."""

    stream = EventStream(client)
    published: list[int] = []  # timestamps (µs) of what was published
    seen: list[tuple[float, int]] = []  # (wall µs when read, clock µs)
    stop = threading.Event()

    def probe():
        from recsys.store import server  # a client of its own

        own = server.connect(STORE_DIR)
        while not stop.is_set():
            value = own.hget("rs:clock", "events")
            seen.append((time.time_ns() / 1000, int(value) if value else 0))
            time.sleep(0.001)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    tick, start, n = 0.01, time.monotonic(), 0
    next_id = 10**15
    while time.monotonic() - start < duration:
        due = int((time.monotonic() - start) * rate) - n
        if due > 0:
            now_us = time.time_ns() // 1000  # one µs apart: the clock passing an event means its batch is applied
            batch = synthetic_events(users, items, due, next_id + n)
            for k, e in enumerate(batch):
                e["timestamp"] = from_us(now_us + k)
            stream.publish(batch, atomic=False)
            published.extend(now_us + k for k in range(due))
            n += due
        time.sleep(tick)
    wait_drained(client)
    time.sleep(0.01)
    stop.set()
    prober.join()
    seen_at = np.array([s[0] for s in seen])
    clocks = np.maximum.accumulate(np.array([s[1] for s in seen]))
    lags = []
    for ts in published:  # the first probe whose clock reached the event
        i = int(np.searchsorted(clocks, ts))
        if i < len(clocks):
            lags.append((seen_at[i] - ts) / 1000)
    return {"offered_rate": rate, "achieved_rate": round(n / duration, 1), "events": n,
            "visible_ms": percentiles(lags)}


def lookups(live_features, online, users, items, candidates: int, n: int) -> dict:
    from recsys.online.features import model_inputs

    specs, query, rng = model_inputs(online.schema, "dlrm"), model_inputs(online.schema, "two_tower.user"), \
        random.Random(1)
    known = [u for u in users if online.user(u) is not None]
    state_ms, live_ms, snapshot_ms = [], [], []
    for _ in range(n):  # what serving does per request: the query tower's inputs, then the ranker's
        user, cands = rng.choice(known), rng.sample(items, candidates)
        t0 = time.perf_counter()
        state = live_features.user(user)
        live_features.reader.items(state, cands, [online.category.get(i) for i in cands])
        t1 = time.perf_counter()
        state = live_features.user(user)
        live_features.query_inputs(state, query)
        live_features.ranking_inputs(state, cands, specs)
        t2 = time.perf_counter()
        row = online.user(user)
        online.query_inputs(row, query)
        online.ranking_inputs(row, cands, specs)
        t3 = time.perf_counter()
        state_ms.append((t1 - t0) * 1000)
        live_ms.append((t2 - t1) * 1000)
        snapshot_ms.append((t3 - t2) * 1000)
    return {"candidates": candidates, "store_state_ms": percentiles(state_ms),
            "live_inputs_ms": percentiles(live_ms), "snapshot_inputs_ms": percentiles(snapshot_ms)}


def group_read(client, group: str = "features") -> int:
    return EventStream(client).group(group).get("entries-read") or 0


def throughput(client, users, items, backlog: int, start_consumer) -> dict:
    """Queue ``backlog`` events, start the consumer, time it from its first acknowledged entry to the last."""

    start_us = int(client.hget("rs:clock", "events")) + 1
    events = synthetic_events(users, items, backlog, 2 * 10**15, start_us=start_us, step_us=1000)
    for e in events:
        e["timestamp"] = from_us(e["timestamp"])
    EventStream(client).publish(events, atomic=False)
    process = start_consumer()
    while (first := group_read(client)) == 0:
        time.sleep(0.005)
    t0 = time.perf_counter()
    wait_drained(client)
    seconds = time.perf_counter() - t0
    return {"process": process, "backlog": backlog, "seconds": round(seconds, 2),
            "events_per_s": round((backlog - first) / seconds)}


STORE_DIR = Path()


def main() -> int:
    global STORE_DIR
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="", help="dataset folder (default: the tiny shop, built here)")
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s for the freshness run (1000)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of the freshness run (20)")
    parser.add_argument("--candidates", type=int, default=100, help="candidates per request (100)")
    parser.add_argument("--requests", type=int, default=1000, help="requests for the lookup timings (1000)")
    parser.add_argument("--backlog", type=int, default=50_000, help="events queued for the throughput run")
    parser.add_argument("--out", default="runs/bench/online.json", help="where the figures go (JSON)")
    args = parser.parse_args()

    import redis

    from recsys.data.dataset import Dataset
    from recsys.online.features import OnlineFeatures
    from recsys.online.live import LiveFeatures
    from recsys.schema import load_schema
    from recsys.store import server
    from recsys.store.consumer import LiveContext, bootstrap
    from recsys.store.state import StateReader

    work = Path(tempfile.mkdtemp(prefix="bench_online_"))
    schema = load_schema()
    dataset = Dataset.open(args.dataset, schema) if args.dataset else tiny_dataset(work)
    STORE_DIR = work / "store"
    info = server.start(STORE_DIR)
    consumer = None
    try:
        client = server.connect(STORE_DIR)
        context = LiveContext.of(dataset, schema)
        empty = client.info("memory")["used_memory"]
        t0 = time.perf_counter()
        n_boot = bootstrap(client, context, dataset)
        boot_s = time.perf_counter() - t0
        used = client.info("memory")["used_memory"] - empty
        online = OnlineFeatures(dataset, schema)
        users, items = online.users["_user"].to_list(), online.items["_item"].to_list()
        n_users = len(client.keys("rs:{u:*}:n")) or 1
        n_items = len(client.keys("rs:{i:*}:n")) or 1
        user_bytes = sum(client.memory_usage(k) or 0 for k in client.scan_iter("rs:{u:*", count=1000))
        item_bytes = sum(client.memory_usage(k) or 0 for k in client.scan_iter("rs:{i:*", count=1000))
        memory = {"bootstrap_events": n_boot, "bootstrap_s": round(boot_s, 2),
                  "bootstrap_events_per_s": round(n_boot / boot_s), "used_memory_mib": round(used / 2**20, 2),
                  "users_with_state": n_users, "items_with_state": n_items,
                  "bytes_per_user": round(user_bytes / n_users), "bytes_per_item": round(item_bytes / n_items)}

        consumer_rate = throughput(client, users, items, args.backlog,
                                   lambda: consumer_process(STORE_DIR, dataset.path, work / "consumer.log"))
        consumer = consumer_rate.pop("process")

        fresh = freshness(client, users, items, args.rate, args.duration)
        reader = StateReader(redis.from_url(server.store_url(STORE_DIR)), context.layout, "wall")
        lookup = lookups(LiveFeatures(online, reader), online, users, items, args.candidates, args.requests)
        stream_mib = client.memory_usage("rs:events") / 2**20
        memory["stream_entries"], memory["stream_mib"] = client.xlen("rs:events"), round(stream_mib, 2)
    finally:
        if consumer is not None:
            consumer.terminate()
            consumer.wait(timeout=30)
        server.stop(STORE_DIR)

    result = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
              "python": platform.python_version(), "dataset": dataset.id, "valkey_pid": info.pid,
              "appendfsync": info.appendfsync, "freshness": fresh, "consumer": consumer_rate, "lookups": lookup,
              "memory": memory}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    v, s, li, sn = fresh["visible_ms"], lookup["store_state_ms"], lookup["live_inputs_ms"], lookup["snapshot_inputs_ms"]
    print(f"online store benchmark: {os.cpu_count()} CPUs, dataset {dataset.id}, appendfsync {info.appendfsync}")
    print(f"  event -> feature visible at {fresh['achieved_rate']:.0f} events/s ({fresh['events']:,} events): "
          f"p50 {v['p50']:.1f} ms, p99 {v['p99']:.1f} ms, max {v['max']:.1f} ms")
    print(f"  consumer throughput: {consumer_rate['events_per_s']:,} events/s ({consumer_rate['backlog']:,} "
          "queued)")
    print(f"  one request ({args.candidates} candidates): store state p50 {s['p50']:.2f} ms p99 {s['p99']:.2f} ms; "
          f"live inputs p50 {li['p50']:.2f} ms p99 {li['p99']:.2f} ms; snapshot inputs p50 {sn['p50']:.2f} ms "
          f"p99 {sn['p99']:.2f} ms (live / snapshot p50 {li['p50'] / sn['p50']:.1f}x)")
    print(f"  memory: {memory['bytes_per_user']:,} B per user, {memory['bytes_per_item']:,} B per item "
          f"({memory['users_with_state']:,} users, {memory['items_with_state']:,} items, "
          f"{memory['bootstrap_events']:,} events bootstrapped at {memory['bootstrap_events_per_s']:,}/s); stream "
          f"{memory['stream_entries']:,} entries, {memory['stream_mib']:.1f} MiB")
    print(f"  -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
