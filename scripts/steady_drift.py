"""Steady simulated traffic at the demo shop's size: what the monitor's drift (PSI per logged input, no
``--skip-feature``) reads when the app serves the dataset's snapshot and when it serves the live store.

The shop a dataset was built from is played forward from the end of its export in its own time
(`recsys.retrain.shop_traffic.ShopTraffic`: the generator's sessions, click model and follow-up events against
``/recommend``, ``/feedback`` and, on the live store, ``/events``): nothing about the shop changes, so whatever
drifts is the serving path's skew. The reference is the dataset's test split (its last days), as the monitor's;
the floor is the shop's own day-to-day noise (the val split against the test split). Writes ``<work>/report.md``
and ``<work>/steady_drift.json``.

    python scripts/steady_drift.py --dlrm-run runs/train/<dlrm> --two-tower-run runs/train/<two-tower> \\
        --dataset runs/datasets/<id> --export runs/data/raw/xyzshop --data-config configs/data/drift.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--dlrm-run", required=True)
    p.add_argument("--two-tower-run", required=True)
    p.add_argument("--dataset", required=True, help="the runs' dataset")
    p.add_argument("--export", default="runs/data/raw/xyzshop", help="the shop export the dataset was built from")
    p.add_argument("--data-config", default=str(ROOT / "configs" / "data" / "default.yaml"),
                   help="the data config that generated the export (its generator section is the shop)")
    p.add_argument("--requests", type=int, default=2000, help="lists asked for on each feature source (2000)")
    p.add_argument("--features", default="snapshot,live")
    p.add_argument("--work", default="runs/steady_drift")
    args = p.parse_args(argv)

    import httpx
    import polars as pl
    from bench_serving import Served

    from recsys.config import DataConfig, load_config
    from recsys.data.dataset import Dataset
    from recsys.data.features import META_USER
    from recsys.data.generate import ShopWorld
    from recsys.monitoring.drift import feature_drift
    from recsys.monitoring.monitor import Monitor, reference_profile
    from recsys.online.features import OnlineFeatures
    from recsys.retrain.shop_traffic import ShopTraffic, live_store_settle, sessions_per_day
    from recsys.schema import load_schema
    from recsys.store import server as store_server

    work = Path(args.work).resolve()
    schema = load_schema()
    dataset = Dataset.open(args.dataset, schema)
    world = ShopWorld(load_config(DataConfig, args.data_config).generator)
    rate, known = sessions_per_day(args.export), set(OnlineFeatures(dataset, schema).users[META_USER].to_list())
    profile = reference_profile(dataset, schema, "test")
    logged = [f.name for f in schema.used_by("two_tower.user") if f.name in profile]  # what the answers log
    floor = {d.name: d.psi for d in feature_drift(profile, pl.scan_parquet(dataset.shards("ranking", "val")), logged)}
    psi: dict[str, dict[str, float]] = {}
    for features in args.features.split(","):  # (a cluster and Triton each: the arms share nothing)
        with Served(args.dlrm_run, args.two_tower_run, str(dataset.path), work) as served:
            event_log = work / "events" / features
            began = datetime.now(UTC)
            with served.app(features, str(event_log)) as url, \
                    httpx.Client(base_url=url, trust_env=False, timeout=60.0) as client:
                live = features == "live"
                settle = live_store_settle(store_server.connect(work / "store")) if live else (lambda now_us: None)
                traffic = ShopTraffic(world, client, world.end_s, rate, settle=settle, known_users=known,
                                      shop_events=live)
                answered = traffic.run(args.requests)
                monitor = Monitor(event_log, profile, ROOT / "configs" / "monitoring" / "alerts.yaml",
                                  window=timedelta(days=1))
                deadline = time.monotonic() + 120  # the replicas flush their request logs every second
                while monitor.requests.refresh() is None or monitor.requests.rows_read < len(answered):
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{features}: the app logged {monitor.requests.rows_read} of "
                                         f"{len(answered)} answers")
                    time.sleep(0.2)
                metrics = monitor.evaluate(since=began).metrics
            psi[features] = {k.removeprefix("drift.psi."): v for k, v in metrics.items() if k.startswith("drift.psi.")}
            print(f"  {features}: {len(answered):,} lists, {metrics.get('drift.rows', 0):,.0f} rows judged, PSI max "
                  f"{max(psi[features].values()):.3f}")
    write_report(work, psi, floor, args.requests)
    return 0


def write_report(work: Path, psi: dict[str, dict[str, float]], floor: dict[str, float], requests: int) -> None:
    names = sorted(floor)
    sources = list(psi)
    rows = [f"| {n} | {floor[n]:.3f} | " + " | ".join(f"{psi[s].get(n, float('nan')):.3f}" for s in sources) + " |"
            for n in names]
    (work / "steady_drift.json").write_text(json.dumps({"requests": requests, "floor": floor, "psi": psi}, indent=1))
    (work / "report.md").write_text("\n".join([
        "# Steady simulated traffic: the monitor's PSI per logged input", "",
        f"{requests:,} lists on each feature source; reference: the dataset's test split; floor: its val split "
        "against it (the shop's own day-to-day noise).", "",
        "| input | floor | " + " | ".join(sources) + " |", "|---|---|" + "---|" * len(sources), *rows, ""]))
    print((work / "report.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
