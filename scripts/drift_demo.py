"""The self-retraining loop at the demo's scale (``./scripts/demo.sh --drift``): a shop whose users' tastes shift.

Trains both models on the shop's export up to the shift day, serves them (Triton + the Ray Serve app), sends
simulated shoppers who click on what they truly like (the generator's ground truth), shifts their tastes, and lets
the monitor and ``recsys loop`` notice, retrain on the export up to today plus the app's feedback, canary and promote
(`recsys.retrain.scenario`). Writes ``<out>/report.md`` with the timeline plot.

    python scripts/drift_demo.py --out runs/drift-demo
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=f"runs/drift-demo-{datetime.now(UTC):%Y%m%d-%H%M%S}", help="work folder")
    p.add_argument("--data-config", default=str(ROOT / "configs" / "data" / "drift.yaml"),
                   help="a shop with generator.drift set (default: configs/data/drift.yaml)")
    p.add_argument("--train-config", default=str(ROOT / "configs" / "train" / "default.yaml"))
    p.add_argument("--visits-per-tick", type=int, default=100)
    p.add_argument("--min-impressions", type=int, default=5000, help="per canary variant before the verdict")
    args = p.parse_args(argv)

    import httpx
    import ray
    import yaml

    from recsys.config import DataConfig, load_config
    from recsys.data.generate import ShopWorld
    from recsys.deploy import server
    from recsys.deploy.ports import free_port, free_port_block
    from recsys.online.features import OnlineFeatures
    from recsys.retrain.scenario import (
        DriftScenario,
        monitor_factory,
        plot_timeline,
        prepare,
        shop_config,
        write_loop_config,
    )
    from recsys.retrain.simulate import Shoppers
    from recsys.schema import load_schema
    from recsys.serving_config import ServingConfig
    from recsys.training.config import TrainConfig
    from recsys.training.job import run
    from serving.launch import SPARE_PORTS, direct_ingress_env, run_app

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{out / 'mlflow.db'}"  # a registry of the demo's own
    ports = ServingConfig.ingress_replicas + SPARE_PORTS
    os.environ.update(direct_ingress_env(free_port_block(ports), ports))
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    schema = load_schema()
    raw = yaml.safe_load(Path(args.data_config).read_text())["generator"]
    data = shop_config(Path(args.data_config), out / "data.yaml", days=raw.get("days", 60))
    cfg = load_config(DataConfig, data)
    train_sets = lambda task, ds: [f"dataset={ds.path}", f"output={out / 'train'}", f"name=before-{task}"]  # noqa: E731
    print(f"== train both models on the export up to day {cfg.generator.drift.start_day} (before the shift)")
    stage = prepare(out, data, lambda task, ds: run(task, load_config(TrainConfig, args.train_config,
                                                                      train_sets(task, ds))),
                    before_events=cfg.generator.target_events * cfg.generator.drift.start_day // cfg.generator.days,
                    progress=True)
    config = ServingConfig(dataset=str(stage.dataset.path), retrieval_export=str(out / "two-tower"),
                           triton_url=stage.triton.grpc_url, event_log=str(out / "events"), port=free_port(),
                           rollout_file=str(stage.rollout_file), rollout_poll_s=0.5)
    loop_config = write_loop_config(stage, config.event_log, Path(args.train_config), canary={
        "share": 0.5, "min_impressions": args.min_impressions, "alpha": 0.05, "max_wait_minutes": 30, "poll_s": 2.0})
    running = None
    try:
        running = run_app(config, "127.0.0.1", proxy_port=free_port(), run_dir=out / "run")
        url = running.url
        print(f"== serving on {url}; simulated shoppers visit, then their tastes shift")
        monitor = monitor_factory(stage, config.event_log, ROOT / "configs" / "monitoring" / "alerts.yaml",
                                  window_s=3600, min_impressions=500, schema=schema)
        env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
        log = out / "loop.log"

        def start_loop() -> subprocess.Popen:
            print(f"== the retraining request is in: recsys loop runs (log: {log})")
            return subprocess.Popen([str(Path(sys.executable).with_name("recsys")), "loop", "run", "--config",
                                     str(loop_config)], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)

        known = set(OnlineFeatures(stage.dataset, schema).users["_user"].to_list())
        with httpx.Client(base_url=url, trust_env=False, timeout=60.0) as client:
            shoppers = Shoppers(ShopWorld(cfg.generator), client, known_users=known)
            scenario = DriftScenario(shoppers, monitor, out / "retrain.jsonl", visits_per_tick=args.visits_per_tick,
                                     baseline_ticks=6, max_drift_ticks=40, after_ticks=10, loop_pause_s=2.0)
            scenario.run(start_loop, loop_timeout_s=3600)
    finally:
        if running is not None:
            running.stop()
        server.stop(out / "triton")
        ray.shutdown()
    scenario.add_loop_moments(out / "loop" / "state.json")
    plot = plot_timeline(scenario, out / "timeline.png")
    scenario.save(out / "timeline.json")
    write_report(out, scenario, plot)
    print(f"\nreport: {out / 'report.md'}")
    return 0


def write_report(out: Path, scenario, plot: Path) -> None:
    s = scenario.summary()
    cycle = json.loads((out / "loop" / "state.json").read_text())["cycles"][-1]
    lines = ["# A preference shift, and the loop repairing it", "", f"![timeline]({plot.name})", "",
             "| phase | users | impressions | clicks | CTR | expected CTR (the generator's true click model) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {phase} | {s[phase]['users']:,} | {s[phase]['impressions']:,} | {s[phase]['clicks']:,} | "
              f"{s[phase]['ctr']:.4f} | {s[phase]['expected_ctr']:.4f} |" for phase in ("before", "drift", "after")]
    moments = ", ".join(f"{k} {v:.0f} s" for k, v in s["moments_s"].items())
    lines += ["", f"After the loop vs under the shift (users as the unit): z = {s['recovery']['z']:.2f}, one-sided "
              f"p = {s['recovery']['p_value']:.2g} on the clicks; z = {s['expected_recovery']['z']:.2f}, p = "
              f"{s['expected_recovery']['p_value']:.2g} on the expected clicks. CTR alert floor {s['ctr_floor']:.4f}. "
              f"Moments: {moments}.", "",
              f"## Loop cycle {cycle['id']}: {cycle['outcome']}", "", cycle["detail"], "",
              "| step | seconds | result |", "|---|---|---|"]
    lines += [f"| {name} | {step.get('seconds', '')} | {step.get('summary', '')} |"
              for name, step in cycle["steps"].items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
