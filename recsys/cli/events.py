"""``recsys events replay``: publish an export's events to the event stream."""

from __future__ import annotations

import argparse

from recsys.store.server import DEFAULT_RUN_DIR
from recsys.store.state import DEFAULT_NAMESPACE


def add_parser(commands: argparse._SubParsersAction) -> None:
    events = commands.add_parser("events", help="the live event stream (replay an export into it)",
                                 description="Behaviour events on the store's stream, read by the feature "
                                             "consumer and the event-log sink.")
    sub = events.add_subparsers(dest="action", metavar="<action>", required=True)
    replay = sub.add_parser("replay", help="publish a validated export's events to the stream, in time order",
                            description="Publish the events of a validated export (recsys data validate's output "
                                        "folder), a dataset (its validated source) or an events Parquet file to "
                                        "the stream, in (timestamp, event_id) order: a backfill, a simulation. "
                                        "Publishing the same events again is safe: event ids count once.")
    replay.add_argument("source", help="validated export folder, dataset folder or events .parquet")
    replay.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as "
                                                                 "the store takes them)")
    replay.add_argument("--limit", type=int, default=None, help="publish only the first N events")
    replay.add_argument("--url", default=None, help="redis:// URL of a Valkey / Redis elsewhere (default: "
                                                    "$RECSYS_STORE_URL, else the store started from --run-dir)")
    replay.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="key prefix (default: rs)")
    replay.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=f"the store's run folder (default: "
                                                                   f"{DEFAULT_RUN_DIR})")
    events.set_defaults(func=cmd_events)


def cmd_events(args: argparse.Namespace) -> int:
    from recsys.store import server
    from recsys.store.replay import replay
    from recsys.store.stream import EventStream

    stream = EventStream(server.connect(args.run_dir, args.url), args.namespace)
    n = replay(stream, args.source, rate=args.rate, limit=args.limit, progress=True)
    print(f"published {n:,} events to {stream.key} ({stream.length():,} entries on the stream)")
    return 0
