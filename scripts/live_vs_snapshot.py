"""Under a taste shift, before any retraining: the same model served from the dataset's snapshot features and from
the live store, the same simulated shoppers (users as the unit), beside the same shoppers had their taste not moved.

A shop with a preference shift (``configs/data/drift.yaml`` by default, ``--set`` to resize it) is generated up to
the shift day; both models are trained on it and served (Triton and the Ray Serve app). Then the shop is played
forward from the shift in its own time (`recsys.retrain.shop_traffic.ShopTraffic`: the generator's sessions, with
every user's taste already shifted), twice with the same seed: once against the app on the snapshot (the histories
it serves stop at the shift), once against the app on the live store (each view, click and purchase enters the
features the next list is ranked with); and a third time on the snapshot with the tastes left as they were (the
CTR the shift costs). Fresh histories should recover part of it. Writes
``<out>/report.md`` and ``<out>/live_vs_snapshot.json``.

    python scripts/live_vs_snapshot.py --out runs/live-vs-snapshot [--requests 1500] \\
        [--set generator.n_users=5000 --set generator.target_events=400000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", default=f"runs/live-vs-snapshot-{datetime.now(UTC):%Y%m%d-%H%M%S}", help="work folder")
    p.add_argument("--data-config", default=str(ROOT / "configs" / "data" / "drift.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the data config, e.g. --set generator.n_users=5000 (repeatable)")
    p.add_argument("--train-config", default=str(ROOT / "configs" / "train" / "default.yaml"))
    p.add_argument("--requests", type=int, default=1500, help="lists asked for in each arm (1500)")
    args = p.parse_args(argv)

    import httpx
    import numpy as np
    import ray
    import yaml

    from recsys.config import DataConfig, apply_override, load_config
    from recsys.data.features import META_USER
    from recsys.data.generate import ShopWorld
    from recsys.deploy import server
    from recsys.deploy.ports import free_port, free_port_block
    from recsys.online.features import OnlineFeatures
    from recsys.retrain.scenario import prepare
    from recsys.retrain.shop_traffic import ShopTraffic, live_store_settle, sessions_per_day
    from recsys.retrain.verdict import ctr_test
    from recsys.schema import load_schema
    from recsys.serving_config import ServingConfig, StoreConfig
    from recsys.store import server as store_server
    from recsys.training.config import TrainConfig
    from recsys.training.job import run
    from serving.launch import SPARE_PORTS, direct_ingress_env, run_app
    from serving.live_processes import start_live

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{out / 'mlflow.db'}"
    raw = yaml.safe_load(Path(args.data_config).read_text())
    for override in args.overrides:
        apply_override(raw, override)
    (out / "data.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(DataConfig, out / "data.yaml")
    shift_day = cfg.generator.drift.start_day
    ports = ServingConfig.ingress_replicas + SPARE_PORTS
    os.environ.update(direct_ingress_env(free_port_block(ports), ports))  # before the cluster starts
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)  # (training runs on it too)
    print(f"== the shop up to its shift (day {shift_day}); both models trained on it")
    stage = prepare(out, out / "data.yaml", lambda task, ds: run(task, load_config(TrainConfig, args.train_config, [
        f"dataset={ds.path}", f"output={out / 'train'}", f"name=before-{task}"])),
        before_events=cfg.generator.target_events * shift_day // cfg.generator.days, progress=True)
    world = ShopWorld(cfg.generator)
    unshifted = ShopWorld(replace(cfg.generator, drift=replace(cfg.generator.drift, start_day=None)))  # same world
    rate = sessions_per_day(out / "export-before")
    known = set(OnlineFeatures(stage.dataset, load_schema()).users[META_USER].to_list())
    results = {}
    try:
        for arm, shop, source in (("no shift", unshifted, "snapshot"), ("snapshot", world, "snapshot"),
                                  ("live", world, "live")):
            store_dir, name = out / "store", arm.replace(" ", "-")
            shutil.rmtree(store_dir, ignore_errors=True)
            config = ServingConfig(dataset=str(stage.dataset.path), retrieval_export=str(out / "two-tower"),
                                   triton_url=stage.triton.grpc_url, event_log=str(out / "events" / name),
                                   port=free_port(), rollout_file=str(stage.rollout_file), run_dir=str(out / name),
                                   store=StoreConfig(enabled=source == "live", run_dir=str(store_dir)))
            live = start_live(config, str(stage.dataset.path), progress=False) if source == "live" else None
            running = run_app(config, "127.0.0.1", proxy_port=free_port(), run_dir=out / name)
            try:
                with httpx.Client(base_url=running.url, trust_env=False, timeout=60.0) as client:
                    settle = live_store_settle(store_server.connect(store_dir)) if live else (lambda now_us: None)
                    traffic = ShopTraffic(shop, client, world.drift_s, rate, settle=settle, known_users=known,
                                          shop_events=live is not None)
                    answered = traffic.run(args.requests)
            finally:
                running.stop()
                if live is not None:
                    live.stop()
            per_user: dict[int, list[float]] = {}
            for a in answered:
                row = per_user.setdefault(a.user_id, [0.0, 0.0, 0.0])
                row[0], row[1], row[2] = row[0] + a.clicks, row[1] + a.impressions, row[2] + a.expected_clicks
            results[arm] = np.array(list(per_user.values()))
            shown = results[arm][:, 1].sum()
            print(f"  {arm:8}: {len(per_user):,} users, {int(shown):,} impressions, CTR "
                  f"{results[arm][:, 0].sum() / shown:.4f}, expected CTR {results[arm][:, 2].sum() / shown:.4f}")
    finally:
        ray.shutdown()
        server.stop(out / "triton")
    write_report(out, results, ctr_test)
    return 0


def write_report(out: Path, results: dict, ctr_test) -> None:
    rows, summary = [], {}
    for arm, users in results.items():
        shown = users[:, 1].sum()
        summary[arm] = {"users": len(users), "impressions": int(shown), "clicks": int(users[:, 0].sum()),
                        "ctr": float(users[:, 0].sum() / shown), "expected_ctr": float(users[:, 2].sum() / shown)}
        rows.append(f"| {arm} | {len(users):,} | {int(shown):,} | {summary[arm]['ctr']:.4f} | "
                    f"{summary[arm]['expected_ctr']:.4f} |")
    live, snapshot = results["live"], results["snapshot"]
    for key, column in (("clicks", 0), ("expected_clicks", 2)):
        z, p = ctr_test(live[:, [column, 1]], snapshot[:, [column, 1]])
        summary[f"live_vs_snapshot_{key}"] = {"z": z, "p_value": p}
    (out / "live_vs_snapshot.json").write_text(json.dumps(summary, indent=1))
    lift = summary["live"]["expected_ctr"] / summary["snapshot"]["expected_ctr"] - 1
    cost = summary["snapshot"]["expected_ctr"] - summary["no shift"]["expected_ctr"]
    recovered = (summary["live"]["expected_ctr"] - summary["snapshot"]["expected_ctr"]) / -cost if cost < 0 else None
    (out / "report.md").write_text("\n".join([
        "# Under a taste shift, before retraining: live features against the snapshot", "",
        "| features | users | impressions | CTR | expected CTR (the generator's true click model) |",
        "|---|---|---|---|---|", *rows, "",
        f"Live against snapshot, users as the unit: z = {summary['live_vs_snapshot_clicks']['z']:.2f} (one-sided p = "
        f"{summary['live_vs_snapshot_clicks']['p_value']:.2g}) on the clicks, z = "
        f"{summary['live_vs_snapshot_expected_clicks']['z']:.2f} (p = "
        f"{summary['live_vs_snapshot_expected_clicks']['p_value']:.2g}) on the expected clicks; expected CTR "
        f"{lift:+.1%}" + (f", {recovered:.0%} of what the shift cost" if recovered is not None else "") + ".", ""]))
    print((out / "report.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
