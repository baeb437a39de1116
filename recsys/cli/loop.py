"""``recsys loop``: the self-retraining loop (validate -> build -> train -> register -> canary -> promote)."""

from __future__ import annotations

import argparse
import json
import os

from recsys.schema import PROJECT_ROOT

DEFAULT_CONFIG = str(PROJECT_ROOT / "configs" / "loop" / "default.yaml")


def add_parser(commands: argparse._SubParsersAction) -> None:
    loop = commands.add_parser(
        "loop", help="retrain on alerts or a schedule, canary the new models, promote or roll back",
        description="The self-retraining loop. A cycle starts on a retraining request from `recsys monitor` (its "
                    "trigger file), on the config's schedule, or with --now; it validates the shop's export plus "
                    "the app's feedback, builds a dataset, trains both models, registers them, moves them to "
                    "candidate through the gate, canaries the ranker on the live app and promotes it if it wins on "
                    "CTR, else rolls back. Finished steps are recorded in <work_dir>/state.json: a killed loop "
                    "continues where it stopped when run again.")
    sub = loop.add_subparsers(dest="loop_command", metavar="<action>", required=True)
    for name, help_ in (("run", "resume the unfinished cycle, or start one if due (once, or --watch)"),
                        ("status", "the cycle in progress and the finished ones")):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", default=DEFAULT_CONFIG, help=f"loop config YAML (default: {DEFAULT_CONFIG})")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config value, e.g. --set canary.share=0.2 (repeatable)")
        p.add_argument("--registry", metavar="URI", help="MLflow store (default: MLFLOW_TRACKING_URI, else the "
                                                          "project's SQLite file)")
        if name == "run":
            p.add_argument("--now", metavar="REASON", help="start a cycle now (when none is unfinished)")
            p.add_argument("--watch", action="store_true", help="keep checking for requests every --every seconds")
            p.add_argument("--every", type=float, default=60.0, help="seconds between checks with --watch")
        p.set_defaults(func=cmd_loop)


def _status(loop) -> int:
    data = loop.state.data
    for cycle in data["cycles"]:
        print(f"{cycle['id']}  {cycle['outcome']:<12} {cycle.get('dataset', '-')}  {cycle['detail']}")
    if data["current"]:
        c = data["current"]
        print(f"{c['id']}  in progress   {c.get('dataset', '-')}  ({c['reason']})")
        for step, result in c["steps"].items():
            print(f"    {step:<20} {result['finished_at'][:19]}  {result.get('summary', '')}")
    if not data["cycles"] and not data["current"]:
        print(f"no cycles yet ({loop.state.path})")
    return 0


def cmd_loop(args: argparse.Namespace) -> int:
    import time

    from recsys.retrain.config import load_loop_config
    from recsys.retrain.loop import Loop

    loop = Loop(load_loop_config(args.config, args.overrides), registry=args.registry)
    if args.loop_command == "status":
        return _status(loop)
    # a W&B service inherited from the process that started this one would outlive a crash of this one and keep
    # its run open ("run ID ... is in use" when the run resumes): this process starts its own
    os.environ.pop("WANDB_SERVICE", None)
    force = args.now
    while True:
        cycle = loop.tick(force)
        force = None
        if cycle is None and not args.watch:
            print("nothing to do: no unfinished cycle, no retraining request, no scheduled cycle due")
        elif cycle is not None:
            print(json.dumps({k: cycle[k] for k in ("id", "outcome", "detail")}))
        if not args.watch:
            return 0
        time.sleep(args.every)
