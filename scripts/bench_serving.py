"""Benchmark ``POST /recommend`` over loopback at fixed arrival rates, beside a naive baseline server.

Two servers answer the same requests, one after the other, on the same trained runs:

* **the app**: the real tritonserver (the DLRM) and the Ray Serve application, started as ``recsys serve``
  starts them (throughput-optimized Serve, direct ingress; `serving/launch.py`);
* **the naive baseline**: one process, a plain FastAPI endpoint doing the same work per request with the
  trained torch models in eager mode (user tower, FAISS, filters, the DLRM on every candidate), no batching,
  no Triton, no Ray.

An open-loop asynchronous client (aiohttp) sends requests at a fixed rate whether or not earlier ones have
answered, so queueing shows in the latencies. Per rate it reports achieved RPS, p50 / p95 / p99, errors,
degraded answers, the per-stage medians the app reports, and the CPU each answered request cost, by process (the
ingress replicas, Triton, Ray's own processes, HAProxy, and with live features Valkey and its consumer and sink:
every process under this one but this one, which only generates the load). The app runs twice, on the dataset's
snapshot features and on the live store (``--features``). A server *sustains* a rate when it answers every
request (no errors, no degraded answers), keeps up (achieved >= 95% of offered) and keeps p99 within the SLO
(``--slo-ms``, 50 ms); its sustainable throughput is the highest such rate. The compute of the baseline
alone (in this process, no HTTP) is printed too.

    python scripts/bench_serving.py --dlrm-run runs/train/<dlrm run> --two-tower-run runs/train/<tt run> \\
        [--dataset runs/datasets/<id>] [--rates 50,100,150,200] [--duration 15]

Not a test: the figures depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
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
    import aiohttp

    n = int(rate * duration)
    latencies, errors, degraded, stages = [], 0, 0, {}
    rng = random.Random(0)
    bodies = [json.dumps({"user_id": rng.choice(users), "k": k}).encode() for _ in range(n)]
    connector = aiohttp.TCPConnector(limit=1024)
    timeout = aiohttp.ClientTimeout(total=30.0)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        async def one(i: int, start: float) -> None:
            nonlocal errors, degraded
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            sent = time.perf_counter()
            try:
                async with session.post("/recommend", data=bodies[i],
                                        headers={"content-type": "application/json"}) as r:
                    body = await r.json() if r.status == 200 else None
                latencies.append((time.perf_counter() - sent) * 1000)
                if body is None:
                    errors += 1
                    return
                degraded += body["degraded"]
                for stage, value in body.get("timings_ms", {}).items():
                    stages.setdefault(stage, []).append(value)
            except Exception:
                errors += 1

        start = time.perf_counter()
        await asyncio.gather(*(one(i, start) for i in range(n)))
        elapsed = time.perf_counter() - start
    return {"rate": rate, "sent": n, "achieved_rps": (n - errors) / elapsed, **percentiles(latencies),
            "errors": errors, "degraded": degraded,
            "stage_p50_ms": {s: float(np.median(v)) for s, v in stages.items()}}


GROUPS = (("ingress", b"ServeReplica:recsys:Ingress"), ("triton", b"tritonserver"),
          ("triton", b"triton_python_backend_stub"), ("balancer", b"haproxy"),
          ("store", b"valkey-server"), ("store", b"redis-server"), ("consumer+sink", b"store\x00consume"),
          ("consumer+sink", b"store\x00sink"), ("naive", b"naive_server.py"),
          ("ray: raylet", b"raylet"), ("ray: gcs", b"gcs_server"), ("ray: serve controller", b"ServeController"),
          ("ray: proxy", b"ProxyActor"), ("ray: agents", b"agent"))
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) so far of every process under this one (not this one: the load generator), by
    what it is (Ray's other processes: ``ray: other``)."""
    parent, cpu, names = {}, {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            names[int(entry.name)] = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) * TICK_S
    me, totals = os.getpid(), {}
    for pid, seconds in cpu.items():
        ancestor = parent.get(pid)
        while ancestor not in (None, 0, 1, me):
            ancestor = parent.get(ancestor)
        if ancestor != me:
            continue
        group = next((g for g, title in GROUPS if title in names[pid]), "ray: other")
        totals[group] = totals.get(group, 0.0) + seconds
    return totals


def sweep(name: str, url: str, users: list[int], rates: list[float], duration: float, k: int, slo_ms: float) -> dict:
    asyncio.run(drive(url, users, 50, 5, k))  # warm-up
    rows = []
    for rate in rates:
        before = cpu_seconds()
        row = asyncio.run(drive(url, users, rate, duration, k))
        after, answered = cpu_seconds(), max(row["sent"] - row["errors"], 1)
        row["cpu_ms_per_request"] = {g: round((after[g] - before.get(g, 0.0)) * 1000 / answered, 2)
                                     for g in sorted(after)}
        row["cpu_ms_per_request"]["total"] = round(sum(row["cpu_ms_per_request"].values()), 2)
        row["sustained"] = (row["errors"] == 0 and row["degraded"] == 0 and row["achieved_rps"] >= 0.95 * rate
                            and row["p99"] <= slo_ms)
        rows.append(row)
        print(f"{name:6} rate {rate:5.0f}/s  achieved {row['achieved_rps']:6.1f}/s  p50 {row['p50']:8.1f} ms  "
              f"p95 {row['p95']:8.1f} ms  p99 {row['p99']:8.1f} ms  errors {row['errors']}  "
              f"degraded {row['degraded']}  {'sustained' if row['sustained'] else 'NOT sustained'}"
              + ("  stages p50 " + ", ".join(f"{s} {v:.1f}" for s, v in row["stage_p50_ms"].items())
                 if row["stage_p50_ms"] else "")
              + "\n       CPU ms per answered request: " + ", ".join(f"{g} {v:.1f}"
                                                              for g, v in row["cpu_ms_per_request"].items()),
              flush=True)
        time.sleep(2)  # let queues drain before the next rate
    sustained = [r["rate"] for r in rows if r["sustained"]]
    return {"rates": rows, "sustainable_rps": max(sustained) if sustained else 0.0}


class Naive:
    """The same work per request with the trained torch models in eager mode, one request at a time."""

    def __init__(self, dataset: str, dlrm_checkpoint: Path, two_tower_checkpoint: Path, items_folder: Path,
                 candidates: int = 100):
        import torch

        from recsys.data.dataset import Dataset
        from recsys.export.ann import load_index
        from recsys.online.features import OnlineFeatures, model_inputs
        from recsys.schema import load_schema
        from recsys.training.checkpoint import load_model

        torch.set_num_threads(1)
        schema = load_schema()
        self.features = OnlineFeatures(Dataset.open(dataset, schema), schema)
        self.specs = model_inputs(schema, "dlrm")
        self.dlrm, _ = load_model(dlrm_checkpoint)
        self.two_tower, _ = load_model(two_tower_checkpoint)
        self.dlrm.eval()
        self.two_tower.eval()
        self.index, self.item_ids, _ = load_index(items_folder)
        self.candidates = candidates

    def recommend(self, user_id: int, k: int) -> list[int] | None:
        import polars as pl
        import torch

        from recsys.models.inputs import make_batch

        f = self.features
        user = f.user(user_id)
        if user is None:
            return None
        with torch.no_grad():
            query = self.two_tower.user_tower(make_batch(f.users.slice(user.index, 1), self.two_tower.user_spec))
            _, rows = self.index.search(np.ascontiguousarray(query.numpy(), dtype=np.float32), self.candidates)
            kept = f.keep(user_id, [int(self.item_ids[r]) for r in rows[0] if r >= 0], set())
            arrays = f.ranking_inputs(user, kept, self.specs)
            frame = pl.DataFrame({n: a[:, 0] if a.shape[1] == 1 else a for n, a in arrays.items()})
            frame = frame.with_columns(pl.lit(0.0).alias(self.dlrm.spec.label.name))
            scores = torch.sigmoid(self.dlrm(make_batch(frame, self.dlrm.spec))).numpy().reshape(-1)
        return [kept[i] for i in np.argsort(-scores, kind="stable")[:k]]


class Served:
    """Both runs exported into a Triton repository, Triton and a local Ray cluster started; `app` then serves the
    Ray Serve app on the dataset's snapshot features or on the live store (started, bootstrapped, consumed and sunk
    as `recsys serve` does), one at a time."""

    def __init__(self, dlrm_run: str, two_tower_run: str, dataset: str, work: Path, replicas: int = 2,
                 rank_deadline_s: float = 0.2):
        self.dlrm_run, self.two_tower_run, self.dataset, self.work = dlrm_run, two_tower_run, dataset, work
        self.replicas, self.rank_deadline_s = replicas, rank_deadline_s

    def __enter__(self) -> Served:
        import ray

        from recsys.cli import main as recsys_main
        from recsys.deploy import server
        from recsys.deploy.ports import free_port, free_port_block
        from recsys.serving_config import ServingConfig
        from serving.launch import SPARE_PORTS, direct_ingress_env

        repo = self.work / "triton_models"
        for task, run in (("dlrm", self.dlrm_run), ("two-tower", self.two_tower_run)):
            if recsys_main(["export", run, "--out", str(self.work / task), "--repository", str(repo)]) != 0:
                raise SystemExit(f"could not export {run}")
        config = replace(ServingConfig(), dataset=self.dataset, retrieval_export=str(self.work / "two-tower"),
                         event_log=str(self.work / "events"), port=free_port(), rank_deadline_s=self.rank_deadline_s,
                         ingress_replicas=self.replicas)
        ports = config.ingress_replicas + SPARE_PORTS
        os.environ.update(direct_ingress_env(free_port_block(ports), ports))  # as `recsys serve` starts its cluster
        triton = server.start(repo, ["dlrm"], run_dir=self.work / "triton")
        self.config = replace(config, triton_url=triton.grpc_url)
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        return self

    def __exit__(self, *exc) -> None:
        import ray

        from recsys.deploy import server

        ray.shutdown()
        server.stop(self.work / "triton")

    @contextlib.contextmanager
    def app(self, features: str, event_log: str | None = None):
        """The app's URL while it serves on ``features`` (snapshot | live), its answers logged to ``event_log``."""
        from recsys.deploy.ports import free_port
        from serving.launch import run_app
        from serving.live_processes import start_live

        live, config = None, replace(self.config, event_log=event_log or self.config.event_log)
        if features == "live":
            shutil.rmtree(self.work / "store", ignore_errors=True)
            config = replace(config, run_dir=str(self.work / "run-live"), store=replace(
                config.store, enabled=True, run_dir=str(self.work / "store")))
            live = start_live(config, self.dataset, progress=False)
        running = run_app(config, "127.0.0.1", proxy_port=free_port(), run_dir=self.work / f"run-{features}")
        try:
            yield running.url
        finally:
            running.stop()
            if live is not None:
                live.stop()


def compute_only(naive: Naive, users: list[int], n: int, k: int) -> dict:
    rng = random.Random(0)
    latencies = []
    for _ in range(n):
        start = time.perf_counter()
        naive.recommend(rng.choice(users), k)
        latencies.append((time.perf_counter() - start) * 1000)
    return {"requests": n, "mean_ms": float(np.mean(latencies)), **percentiles(latencies)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dlrm-run", required=True)
    parser.add_argument("--two-tower-run", required=True)
    parser.add_argument("--dataset", default="", help="the runs' dataset (default: the newest under runs/datasets)")
    parser.add_argument("--rates", default="50,100,150,200,300", help="requests per second, comma-separated")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per rate")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--slo-ms", type=float, default=50.0, help="p99 a sustained rate must keep (ms)")
    parser.add_argument("--rank-deadline", type=float, default=0.2)
    parser.add_argument("--replicas", type=int, default=2, help="ingress replicas behind HAProxy (default 2)")
    parser.add_argument("--baseline-requests", type=int, default=200, help="requests for the compute-only figure")
    parser.add_argument("--features", default="snapshot,live",
                        help="the app's feature sources to run, comma-separated: snapshot (the dataset's online "
                             "tables) and live (the store, with its consumer and sink)")
    parser.add_argument("--work", default="runs/bench_serving")
    parser.add_argument("--out", default="", help="also write the results as JSON here")
    args = parser.parse_args(argv)

    from recsys.training.job import newest_dataset

    args.dataset = args.dataset or str(newest_dataset())

    from recsys.cli.export import final_checkpoint
    from recsys.deploy.ports import free_port
    from serving.launch import wait_healthy

    work = Path(args.work).resolve()
    rates = [float(r) for r in args.rates.split(",")]
    results: dict = {"slo_ms": args.slo_ms}
    with Served(args.dlrm_run, args.two_tower_run, args.dataset, work, replicas=args.replicas,
                rank_deadline_s=args.rank_deadline) as served:
        naive = Naive(args.dataset, final_checkpoint(args.dlrm_run), final_checkpoint(args.two_tower_run),
                      work / "two-tower" / "items")
        users = naive.features.users["_user"].to_list()
        for features in args.features.split(","):
            with served.app(features) as url:
                results[f"app-{features}"] = sweep(f"app ({features})", url, users, rates, args.duration, args.k,
                                                   args.slo_ms)

    port = free_port()
    command = [sys.executable, str(ROOT / "scripts" / "naive_server.py"), "--dlrm-run", args.dlrm_run,
               "--two-tower-run", args.two_tower_run, "--dataset", args.dataset,
               "--items", str(work / "two-tower" / "items"), "--port", str(port)]
    process = subprocess.Popen(command)
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        results["naive"] = sweep("naive", f"http://127.0.0.1:{port}", users, rates, args.duration, args.k,
                                 args.slo_ms)
    finally:
        process.terminate()
        process.wait(timeout=30)
    results["naive_compute_only"] = compute_only(naive, users, args.baseline_requests, args.k)

    naive_rps, base = results["naive"]["sustainable_rps"], results["naive_compute_only"]
    print(f"\nsustainable throughput (0 errors, >= 95% of offered, p99 <= {args.slo_ms:.0f} ms): naive server "
          f"{naive_rps:.0f} req/s")
    for features in args.features.split(","):
        app = results[f"app-{features}"]
        print(f"  app ({features}): {app['sustainable_rps']:.0f} req/s"
              + (f" -> {app['sustainable_rps'] / naive_rps:.2f}x the naive server's" if naive_rps else ""))
        for row, naive_row in zip(app["rates"], results["naive"]["rates"], strict=True):
            mine, theirs = row["cpu_ms_per_request"]["total"], naive_row["cpu_ms_per_request"]["total"]
            print(f"    at {row['rate']:.0f}/s: CPU {mine:.1f} ms per answered request vs the naive server's "
                  f"{theirs:.1f} ms -> {mine / theirs:.2f}x; p99 {row['p99']:.1f} ms vs {naive_row['p99']:.1f} ms")
    print(f"naive compute alone (torch eager in this process, no HTTP, one at a time): mean {base['mean_ms']:.1f} ms,"
          f" p99 {base['p99']:.1f} ms -> at most {1000 / base['mean_ms']:.0f} req/s on one core")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
