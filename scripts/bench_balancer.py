"""What the front door costs: CPU per request of HAProxy (in front of the ingress replicas' own HTTP servers, as
``recsys serve`` runs them) against Ray Serve's own HTTP proxy (``RAY_SERVE_THROUGHPUT_OPTIMIZED=0``), side by side
on the same trained runs, the same requests at the same open-loop rate.

For each front it starts Triton and the app (two ingress replicas), warms up, then sends ``--requests`` requests
at ``--rate`` per second and reads the CPU time (user + system, from /proc) that the front process and every
process of the app (Ray's workers, HAProxy, tritonserver) used meanwhile. It prints CPU milliseconds per request
for the front alone and for everything, their ratio between the fronts, and the latencies.

    python scripts/bench_balancer.py --dlrm-run runs/train/<dlrm run> --two-tower-run runs/train/<tt run> \\
        [--dataset runs/datasets/<id>] [--rate 50] [--requests 1500]

Not a test: the figures depend on the machine and on what else runs on it. Each front runs in a process of its
own (the mode is read when Ray starts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("WANDB_MODE", "offline")
FRONTS = ("haproxy", "ray-proxy")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def descendants(root: int) -> list[int]:
    """Every live process under ``root`` (our Ray cluster, HAProxy, tritonserver and its stubs)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [c for c, p in parents.items() if p == pid]
        found += children
        frontier += children
    return found


def process_titled(title: bytes, among: list[int]) -> int:
    for pid in among:
        try:
            if title in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            pass
    raise RuntimeError(f"no process titled {title!r}")


def measure(front: str, args: argparse.Namespace) -> dict:
    """One front, in this process: start everything, drive the load, read the CPU used."""
    import ray
    from bench_serving import drive

    from recsys.cli import main as recsys_main
    from recsys.data.dataset import Dataset
    from recsys.deploy import server
    from recsys.deploy.ports import free_port, free_port_block
    from recsys.online.features import OnlineFeatures
    from recsys.schema import load_schema
    from recsys.serving_config import ServingConfig
    from recsys.training.job import newest_dataset
    from serving.launch import SPARE_PORTS, direct_ingress_env, run_app

    work = Path(args.work).resolve() / front
    repo = work / "triton_models"
    for task, run in (("dlrm", args.dlrm_run), ("two-tower", args.two_tower_run)):
        if recsys_main(["export", run, "--out", str(work / task), "--repository", str(repo), "--no-register"]) != 0:
            raise RuntimeError(f"export of {run} failed")
    dataset = args.dataset or newest_dataset()
    users = OnlineFeatures(Dataset.open(dataset), load_schema()).users["_user"].to_list()
    config = replace(ServingConfig(), dataset=dataset, retrieval_export=str(work / "two-tower"),
                     event_log=str(work / "events"), port=free_port(), ingress_replicas=2, rank_deadline_s=1.0)
    if front == "haproxy":
        ports = config.ingress_replicas + SPARE_PORTS
        os.environ.update(direct_ingress_env(free_port_block(ports), ports))
    else:
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "0"
    triton = server.start(repo, ["dlrm"], run_dir=work / "triton")
    config = replace(config, triton_url=triton.grpc_url)
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        proxy_port = config.port if front == "ray-proxy" else free_port()
        running = run_app(config, "127.0.0.1", proxy_port=proxy_port, run_dir=work / "run")
        try:
            asyncio.run(drive(running.url, users, args.rate, 200 / args.rate, 10))  # warm-up: 200 requests
            pids = descendants(os.getpid())
            front_pid = (running.balancer.proc.pid if running.balancer is not None
                         else process_titled(b"ray::ProxyActor", pids))
            before_front, before_all = cpu_seconds(front_pid), sum(map(cpu_seconds, pids))
            row = asyncio.run(drive(running.url, users, args.rate, args.requests / args.rate, 10))
            front_s, all_s = cpu_seconds(front_pid) - before_front, sum(map(cpu_seconds, pids)) - before_all
        finally:
            running.stop()
    finally:
        ray.shutdown()
        server.stop(work / "triton")
    answered = row["sent"] - row["errors"]
    return {"front": front, "requests": row["sent"], "errors": row["errors"], "degraded": row["degraded"],
            "rate": args.rate, "p50_ms": row["p50"], "p99_ms": row["p99"],
            "front_cpu_ms_per_request": 1000 * front_s / max(answered, 1),
            "all_cpu_ms_per_request": 1000 * all_s / max(answered, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dlrm-run", required=True)
    parser.add_argument("--two-tower-run", required=True)
    parser.add_argument("--dataset", default="", help="the runs' dataset (default: the newest under runs/datasets)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second (default 50)")
    parser.add_argument("--requests", type=int, default=1500, help="measured requests per front (default 1500)")
    parser.add_argument("--work", default="runs/bench_balancer")
    parser.add_argument("--only", choices=FRONTS, help=argparse.SUPPRESS)  # one front, in this process
    parser.add_argument("--out", default="", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.only:
        print(json.dumps(measure(args.only, args)))
        return 0
    results = {}
    for front in FRONTS:
        command = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--only", front]
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            print(out.stdout[-2000:] + out.stderr[-4000:], file=sys.stderr)
            return 1
        results[front] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{'front':10} {'requests':>8} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} {'front CPU ms/req':>17} "
          f"{'all CPU ms/req':>15}")
    for r in results.values():
        print(f"{r['front']:10} {r['requests']:>8} {r['errors']:>6} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
              f"{r['front_cpu_ms_per_request']:>17.3f} {r['all_cpu_ms_per_request']:>15.3f}")
    h, p = results["haproxy"], results["ray-proxy"]
    print(f"Ray's proxy / HAProxy: front {p['front_cpu_ms_per_request'] / h['front_cpu_ms_per_request']:.1f}x, "
          f"all processes {p['all_cpu_ms_per_request'] / h['all_cpu_ms_per_request']:.2f}x the CPU per request")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
