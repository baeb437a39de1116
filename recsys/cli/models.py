"""``recsys models``: the model registry (MLflow) — versions with lineage, aliases, the promotion gate, history."""

from __future__ import annotations

import argparse
import sys

from recsys.serving_config import ServingConfig

TASKS = ("dlrm", "two-tower")


def add_parser(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser(
        "models", help="the model registry: list, show, diff, promote, roll back registered versions",
        description="Registered model versions (one per `recsys export`, named by task) in MLflow's Model Registry, "
                    "with their lineage; the `candidate` and `production` aliases, moved only through the promotion "
                    "gate, and the history of every move. The store is --registry, else MLFLOW_TRACKING_URI, else "
                    "runs/registry/mlflow.db.")
    sub = models.add_subparsers(dest="action", metavar="<action>", required=True)
    parsers = {
        "list": sub.add_parser("list", help="every version: created, aliases, dataset, test metric, parity",
                               description="A table of the task's registered versions, oldest first."),
        "show": sub.add_parser("show", help="one version's full lineage",
                               description="Everything recorded for one version: data, code, training run and "
                                           "config, W&B run, metrics, baselines, parity, artifacts, Triton versions."),
        "diff": sub.add_parser("diff", help="two versions' lineage and metrics side by side",
                               description="Lineage and metrics of two versions side by side; '*' marks a "
                                           "difference, and metric rows show V2 - V1."),
        "promote": sub.add_parser("promote", help="move the candidate or production alias through the gate",
                                  description="Move an alias to a version if it passes the gate. candidate: export "
                                              "parity passed and the schema hash equals the serving schema. "
                                              "production: the same, and its test metric (dlrm: test/auc, two-tower: "
                                              "test/recall@100) beats the current production version's by more "
                                              "than --margin on the same test set (both re-evaluated on the "
                                              "candidate's dataset when they were trained on different ones). "
                                              "--metric compares another test metric (test/gauc, test/ndcg@10); "
                                              "--floor makes either alias require beating the named baselines "
                                              "recorded beside the model. "
                                              "Exit code 1, naming every failed check, when refused."),
        "rollback": sub.add_parser("rollback", help="production back to the previous production version",
                                   description="Point production at the version that was production before the "
                                               "current one (refused if there is none); recorded in the history."),
        "history": sub.add_parser("history", help="every alias move: who, when, why, from and to which version",
                                  description="Every move of the task's aliases, oldest first, with the gate's "
                                              "comparison and any override."),
        "deploy": sub.add_parser("deploy", help="serve the aliases on the running Triton and app, without dropping a "
                                 "request", description="Make the serving app rank with the registry's aliases: "
                                 "production for everyone, and the candidate (if another version) for --share of "
                                 "users, chosen by a stable hash of the user id. Adds missing versions to Triton's "
                                 "repository, loads them beside the ones serving, moves traffic (the app's replicas "
                                 "follow the rollout file), then unloads versions no longer named. The served "
                                 "versions are pinned in the model's configs, so a restarted Triton serves the "
                                 "same. Refused if the rollout file changed while this ran."),
        "register": sub.add_parser("register", help="register an export folder (what `recsys export` does itself)",
                                   description="Register the export in a folder written by `recsys export` (e.g. "
                                               "one made with --no-register) as a new version."),
    }
    parsers["show"].add_argument("version", type=int, help="version number")
    parsers["diff"].add_argument("version", type=int, help="first version (V1)")
    parsers["diff"].add_argument("other", type=int, help="second version (V2)")
    promote = parsers["promote"]
    promote.add_argument("version", type=int, help="version number")
    promote.add_argument("--to", required=True, choices=("candidate", "production"), help="the alias to move")
    promote.add_argument("--margin", type=float, default=0.0,
                         help="production only: how much the metric must beat production by (default 0: strictly "
                              "better)")
    promote.add_argument("--metric", help="the test metric compared (default: dlrm test/auc, two-tower "
                         "test/recall@100), e.g. test/gauc or test/ndcg@10 (the clicks within each request)")
    promote.add_argument("--floor", default="", metavar="BASELINES",
                         help="comma-separated baselines the version's metric must beat, for either alias: "
                              "popularity, logistic (regression on the same inputs), oracle")
    promote.add_argument("--force", metavar="REASON", help="override failed checks; the reason is recorded")
    deploy = parsers["deploy"]
    deploy.add_argument("--share", type=float, default=0.1, help="share of users for the candidate (default 0.1)")
    deploy.add_argument("--triton-run-dir", default="runs/triton", help="the running Triton's run folder "
                        "(`recsys triton start --run-dir`, default runs/triton)")
    deploy.add_argument("--rollout-file", default=ServingConfig.rollout_file,
                        help=f"the app's rollout state (default {ServingConfig.rollout_file})")
    deploy.add_argument("--grace", type=float, default=3.0,
                        help="seconds between moving traffic and unloading old versions (default 3)")
    parsers["register"].add_argument("export_dir", help="a folder written by `recsys export` (with export.json)")
    parsers["register"].add_argument("--allow-below-floor", metavar="REASON",
                                     help="register a model that does not beat popularity (and logistic regression, "
                                     "for the ranker) on validation, for this reason (recorded)")
    for name in ("promote", "rollback"):
        parsers[name].add_argument("--reason", default="", help="why (recorded with the move)")
        parsers[name].add_argument("--who", help="who moves it (default: the current user)")
    for name, p in parsers.items():
        if name != "register":
            p.add_argument("--task", choices=TASKS, default="dlrm", help="which model (default: dlrm)")
        p.add_argument("--registry", metavar="URI",
                       help="MLflow store URI (default: MLFLOW_TRACKING_URI, else sqlite:///<project>/runs/registry/"
                            "mlflow.db)")
    models.set_defaults(func=cmd_models)


def _metric(v) -> str:
    key, value = v.primary_metric
    return f"{key}={value:.4f}" if value is not None else f"{key}=?"


def cmd_models(args: argparse.Namespace) -> int:
    from recsys import registry
    from recsys.registry import report as view

    if args.action == "deploy":
        return _deploy(args)
    if args.action == "register":
        v = registry.register(args.export_dir, registry=args.registry, allow_below_floor=args.allow_below_floor)
        print(f"registered {v.task} version {v.version} in {registry.registry_uri(args.registry)}")
        return 0
    task = args.task
    if args.action == "list":
        versions = registry.list_versions(task, args.registry)
        if not versions:
            print(f"no registered {task} versions in {registry.registry_uri(args.registry)}")
            return 0
        print(view.table(["version", "created", "aliases", "dataset", "test metric", "parity", "training run"],
                    [[str(v.version), v.created, ",".join(v.aliases) or "-", v.tags.get("dataset_id", "?"),
                      _metric(v), "passed" if v.parity_passed else "FAILED", v.tags.get("training_run", "?")]
                     for v in versions]))
    elif args.action == "show":
        print(view.show(registry.get_version(task, args.version, args.registry)))
    elif args.action == "diff":
        print(view.diff(registry.get_version(task, args.version, args.registry),
                        registry.get_version(task, args.other, args.registry)))
    elif args.action == "history":
        events = registry.history(task, args.registry)
        print(view.history(events) if events else f"no alias moves recorded for {task}")
    else:
        try:
            if args.action == "promote":
                event = registry.promote(task, args.version, args.to, margin=args.margin, force_reason=args.force,
                                         reason=args.reason, who=args.who, registry=args.registry,
                                         metric=args.metric, floor=tuple(b for b in args.floor.split(",") if b))
            else:
                event = registry.rollback(task, reason=args.reason, who=args.who, registry=args.registry)
        except registry.GateRefused as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return 1
        print(view.event_line(event))
        for check in event.checks:
            print(f"  {'pass' if check['passed'] else 'FAIL'}  {check['name']:<7} {check['detail']}")
        if event.forced:
            print(f"  forced: {event.forced}")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from recsys.deploy import rollout, server, triton_control
    from recsys.deploy.registry_state import state_from_registry

    info = server.running(args.triton_run_dir)
    current = rollout.read(args.rollout_file)
    state = state_from_registry(info, args.share, args.task, registry=args.registry, base=current)
    reason = f"recsys models deploy: production v{state.registry['production']}" + (
        f", candidate v{state.registry['candidate']} for {state.candidate_share:.0%} of users"
        if state.candidate else "")
    # refused (RolloutConflict) if the state moved on since it was read, e.g. a replica rolled a candidate back
    new = triton_control.apply(args.rollout_file, state, reason, expect_revision=current.revision if current else 0,
                               info=info, grace_s=args.grace, event={"action": "deploy", "registry": state.registry})
    print(f"serving {new.model}: production = Triton version {new.production} (registry v{new.registry['production']})"
          + (f", candidate = Triton version {new.candidate} (registry v{new.registry['candidate']}) for "
             f"{new.candidate_share:.0%} of users" if new.candidate else ", no candidate")
          + f"  [{args.rollout_file}, revision {new.revision}]")
    return 0
