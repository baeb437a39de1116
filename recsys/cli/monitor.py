"""``recsys monitor``: metrics, drift and alerts over what the serving app logged."""

from __future__ import annotations

import argparse

from recsys.schema import PROJECT_ROOT

DEFAULT_RULES = str(PROJECT_ROOT / "configs" / "monitoring" / "alerts.yaml")


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "monitor", help="CTR per variant, latency, errors and data drift of the serving app; alerts",
        description="Evaluate the serving app's logs over a trailing window: click-through and purchase rate per "
                    "variant (from /feedback), answers that lost a stage and the p99 of the app's time per answer "
                    "(from the request log), and drift of the logged model inputs against the serving dataset's "
                    "profile (PSI, a two-sample test, unseen categories). Then run the alert rules: log, webhook, "
                    "and the retraining trigger (a JSON line in --trigger). Once, or every --every seconds.")
    p.add_argument("--event-log", default="runs/serving/events", help="the app's event_log folder")
    p.add_argument("--dataset", default="", help="the dataset the served models were trained on (default: newest)")
    p.add_argument("--reference", choices=("test", "val", "train"), default="test",
                   help="which of the dataset's ranking splits live inputs are compared with (default test: the "
                        "most recent days; `train` is the manifest's profile of the whole training window)")
    p.add_argument("--min-drift-rows", type=int, default=200,
                   help="logged requests the window needs before drift is computed (default 200)")
    p.add_argument("--skip-feature", dest="skip_features", action="append", default=[], metavar="NAME",
                   help="leave a model input out of the drift check (repeatable), e.g. user_recency_hours: served "
                        "from the dataset's point-in-time snapshot, it differs from training examples by design")
    p.add_argument("--rules", default=DEFAULT_RULES, help=f"alert rules (default {DEFAULT_RULES})")
    p.add_argument("--window", type=float, default=15.0, help="trailing window in minutes (default 15)")
    p.add_argument("--every", type=float, default=0.0, help="seconds between evaluations (default 0: once)")
    p.add_argument("--count", type=int, default=0, help="stop after this many evaluations (default 0: no limit)")
    p.add_argument("--min-impressions", type=int, default=100,
                   help="impressions a variant needs in the window for a CTR (default 100)")
    p.add_argument("--state", default="runs/monitor/alerts.json", help="alert state (survives restarts)")
    p.add_argument("--trigger", default="runs/monitor/retrain.jsonl", help="where retraining requests go")
    p.add_argument("--history", default="runs/monitor/history.jsonl", help="every snapshot, as JSON lines")
    p.add_argument("--webhook", default=None, help="webhook URL (overrides the rules file's)")
    p.set_defaults(func=cmd_monitor)


def _line(snap) -> str:
    m = snap.metrics
    parts = [f"{snap.at:%Y-%m-%d %H:%M:%S}", f"requests {m.get('serving.requests', 0)}"]
    if "serving.p99_ms" in m:
        parts += [f"degraded {m['serving.degraded_share']:.1%}", f"p99 {m['serving.p99_ms']:.1f} ms"]
    parts += [f"ctr.{k[4:]} {v:.4f}" for k, v in sorted(m.items()) if k.startswith("ctr.")]
    if "drift.max_psi" in m:
        parts.append(f"drift max PSI {m['drift.max_psi']:.3f} ({m['drift.max_psi_feature']}), "
                     f"{m['drift.n_drifted']}/{m['drift.n_features']} features drifted")
    return "  ".join(parts)


def cmd_monitor(args: argparse.Namespace) -> int:
    import time
    from datetime import timedelta

    from recsys.data.dataset import Dataset
    from recsys.monitoring.monitor import Monitor, reference_profile
    from recsys.schema import load_schema
    from recsys.training.job import newest_dataset

    schema = load_schema()
    dataset = Dataset.open(args.dataset or newest_dataset(), schema)
    monitor = Monitor(args.event_log, reference_profile(dataset, schema, args.reference), args.rules,
                      window=timedelta(minutes=args.window), state_file=args.state, trigger_file=args.trigger,
                      history_file=args.history, webhook_url=args.webhook, min_impressions=args.min_impressions,
                      min_drift_rows=args.min_drift_rows, skip_features=tuple(args.skip_features))
    n = 0
    while True:
        snap = monitor.evaluate()
        print(_line(snap), flush=True)
        for alert in snap.notifications:
            print(f"  {alert.summary}", flush=True)
        n += 1
        if args.every <= 0 or (args.count and n >= args.count):
            return 0
        time.sleep(args.every)
