"""Benchmark ``POST /recommend`` over loopback at fixed arrival rates, beside a naive in-process baseline.

Starts the real tritonserver (the DLRM) and the Ray Serve app on two trained runs, drives the app with an
open-loop asynchronous HTTP client (requests sent at a fixed rate whether or not earlier ones have answered,
so queueing shows in the latencies), and reports per rate: achieved RPS, p50 / p95 / p99 latency, errors,
degraded answers and the per-stage medians the app reports. The baseline does the same work per request in
this process with torch eager (user tower, FAISS, filters, DLRM on every candidate), one request at a time
with no batching; its sustainable throughput is 1 / mean latency.

    python scripts/bench_serving.py --dlrm-run runs/train/<dlrm run> --two-tower-run runs/train/<tt run> \\
        [--dataset runs/datasets/<id>] [--rates 25,50,100] [--duration 15]

Not a test: the figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("WANDB_MODE", "offline")


def percentiles(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}


async def drive(url: str, users: list[int], rate: float, duration: float, k: int) -> dict:
    """Open loop: request i leaves at start + i / rate."""
    import httpx

    n = int(rate * duration)
    latencies, errors, degraded, stages = [], 0, 0, {}
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30.0, limits=limits) as client:
        rng = random.Random(0)

        async def one(delay: float) -> None:
            nonlocal errors, degraded
            await asyncio.sleep(delay)
            sent = time.perf_counter()
            try:
                r = await client.post("/recommend", json={"user_id": rng.choice(users), "k": k})
                latencies.append((time.perf_counter() - sent) * 1000)
                if r.status_code != 200:
                    errors += 1
                    return
                body = r.json()
                degraded += body["degraded"]
                for stage, value in body["timings_ms"].items():
                    stages.setdefault(stage, []).append(value)
            except Exception:
                errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(one(i / rate) for i in range(n)))
        elapsed = time.perf_counter() - start
    return {"rate": rate, "sent": n, "achieved_rps": (n - errors) / elapsed, **percentiles(latencies),
            "errors": errors, "degraded": degraded,
            "stage_p50_ms": {s: float(np.median(v)) for s, v in stages.items()}}


def naive_baseline(features, dlrm_checkpoint, two_tower_checkpoint, items_folder, users, n: int, k: int) -> dict:
    """The same work per request with torch eager in this process, one request at a time."""
    import polars as pl
    import torch

    from recsys.export.ann import load_index
    from recsys.models.inputs import make_batch
    from recsys.training.checkpoint import load_model

    torch.set_num_threads(1)
    dlrm, _ = load_model(dlrm_checkpoint)
    two_tower, _ = load_model(two_tower_checkpoint)
    index, item_ids, _ = load_index(items_folder)
    rng = random.Random(0)
    latencies = []
    for _ in range(n):
        start = time.perf_counter()
        user = features.user(rng.choice(users))
        with torch.no_grad():
            query = two_tower.user_tower(make_batch(user.row, two_tower.user_spec)).numpy()
            _, rows = index.search(np.ascontiguousarray(query, dtype=np.float32), 100)
            kept = features.keep(user.user_id, [int(item_ids[r]) for r in rows[0] if r >= 0], set())
            frame = features.ranking_rows(user, kept).with_columns(pl.lit(0.0).alias(dlrm.spec.label.name))
            scores = torch.sigmoid(dlrm(make_batch(frame, dlrm.spec))).numpy().reshape(-1)
        _ = [kept[i] for i in np.argsort(-scores, kind="stable")[:k]]
        latencies.append((time.perf_counter() - start) * 1000)
    return {"requests": n, "mean_ms": float(np.mean(latencies)), **percentiles(latencies),
            "sustainable_rps": 1000.0 / float(np.mean(latencies))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dlrm-run", required=True)
    parser.add_argument("--two-tower-run", required=True)
    parser.add_argument("--dataset", default="", help="the runs' dataset (default: the newest under runs/datasets)")
    parser.add_argument("--rates", default="25,50,100", help="requests per second, comma-separated")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per rate")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rank-deadline", type=float, default=0.2)
    parser.add_argument("--baseline-requests", type=int, default=200)
    parser.add_argument("--work", default="runs/bench_serving")
    parser.add_argument("--out", default="", help="also write the results as JSON here")
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    from recsys.cli import main as recsys_main
    from recsys.cli.export import final_checkpoint
    from recsys.data.dataset import Dataset
    from recsys.deploy import server
    from recsys.deploy.server import free_port
    from recsys.schema import load_schema
    from recsys.training.job import newest_dataset
    from serving.app import build_app
    from serving.config import ServingConfig
    from serving.features import OnlineFeatures

    work = Path(args.work).resolve()
    repo = work / "triton_models"
    exports = {}
    for task, run in (("dlrm", args.dlrm_run), ("two-tower", args.two_tower_run)):
        exports[task] = work / task
        if recsys_main(["export", run, "--out", str(exports[task]), "--repository", str(repo)]) != 0:
            return 1
    dataset = args.dataset or str(newest_dataset())
    schema = load_schema()
    ds = Dataset.open(dataset, schema)
    features = OnlineFeatures(ds, schema)
    users = features.users["_user"].to_list()

    triton = server.start(repo, ["dlrm"], run_dir=work / "triton")
    port = free_port()
    config = replace(ServingConfig(), dataset=str(ds.path), retrieval_export=str(exports["two-tower"]),
                     triton_url=triton.grpc_url, event_log=str(work / "events"), port=port,
                     rank_deadline_s=args.rank_deadline)
    results: dict = {"rates": []}
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config), name="recsys", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        asyncio.run(drive(url, users, 10, 3, args.k))  # warm-up
        for rate in [float(r) for r in args.rates.split(",")]:
            row = asyncio.run(drive(url, users, rate, args.duration, args.k))
            results["rates"].append(row)
            print(f"rate {rate:6.0f}/s  achieved {row['achieved_rps']:7.1f}/s  p50 {row['p50']:7.1f} ms  "
                  f"p95 {row['p95']:7.1f} ms  p99 {row['p99']:7.1f} ms  errors {row['errors']}  "
                  f"degraded {row['degraded']}  stages p50 "
                  + ", ".join(f"{s} {v:.1f}" for s, v in row["stage_p50_ms"].items()), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
        server.stop(work / "triton")
    base = naive_baseline(features, final_checkpoint(args.dlrm_run), final_checkpoint(args.two_tower_run),
                          exports["two-tower"] / "items", users, args.baseline_requests, args.k)
    results["naive_baseline"] = base
    print(f"naive baseline (torch eager, in-process, one at a time): mean {base['mean_ms']:.1f} ms, "
          f"p50 {base['p50']:.1f} ms, p99 {base['p99']:.1f} ms -> {base['sustainable_rps']:.1f} req/s sustainable")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
