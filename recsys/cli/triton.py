"""``recsys triton start|stop|status``: the real ``tritonserver`` on the Triton model repository, in the background."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from recsys.schema import PROJECT_ROOT

DEFAULT_REPOSITORY = str(PROJECT_ROOT / "triton_models")
DEFAULT_RUN_DIR = "runs/triton"


def add_parser(commands: argparse._SubParsersAction) -> None:
    triton = commands.add_parser(
        "triton", help="run the Triton Inference Server on the model repository (start / stop / status)",
        description="Run the real tritonserver binary (shipped in the nvidia-pytriton wheel) in the background on "
                    "127.0.0.1, against the Triton model repository, in explicit model-control mode. On a machine "
                    "without a GPU and the ONNX Runtime backend every model runs its CPU twin "
                    "(configs/cpu.pbtxt: the Python backend running the same model.onnx through ONNX Runtime).")
    sub = triton.add_subparsers(dest="action", metavar="<action>", required=True)

    start = sub.add_parser("start", help="start the server and wait until it is ready",
                           description="Start tritonserver in the background, load the models and wait until "
                                       "/v2/health/ready answers; print its addresses. The pid, ports and log path "
                                       "go to <run-dir>/server.json for `status` and `stop`.")
    start.add_argument("--repository", default=DEFAULT_REPOSITORY,
                       help=f"the Triton model repository (default: {DEFAULT_REPOSITORY})")
    start.add_argument("--model", dest="models", action="append", metavar="NAME",
                       help="a model to load at startup (repeatable; default: every model with a version)")
    start.add_argument("--http-port", type=int, default=0, help="HTTP port (default: a free one)")
    start.add_argument("--grpc-port", type=int, default=0, help="gRPC port (default: a free one)")
    start.add_argument("--metrics-port", type=int, default=0, help="Prometheus metrics port (default: a free one)")
    start.add_argument("--config-name", choices=("auto", "cpu", "default"), default="auto",
                       help="model configs to use: cpu = each model's CPU twin, default = its config.pbtxt (GPU), "
                            "auto = the GPU configs only where a GPU and the ONNX Runtime backend exist "
                            "(default: auto)")
    start.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness (default: 120)")
    stop = sub.add_parser("stop", help="stop the server (SIGTERM, then SIGKILL after --timeout)",
                          description="Stop the server started from --run-dir by its own pid: SIGTERM, then "
                                      "SIGKILL to it and its Python-backend stubs after --timeout seconds.")
    stop.add_argument("--timeout", type=float, default=15.0, help="seconds to wait after SIGTERM (default: 15)")
    state = sub.add_parser("status", help="is the server running and ready, and which models are loaded",
                           description="Show the server started from --run-dir: pid, addresses, readiness, the "
                                       "loaded model versions, the versions a rollout pinned in the models' configs "
                                       "(what a restart serves) and the log file. Exit code 1 if it is not "
                                       "running.")
    state.add_argument("--json", action="store_true", help="print the status as JSON")
    for p in (start, stop, state):
        p.add_argument("--run-dir", default=DEFAULT_RUN_DIR,
                       help=f"where the server's state file and log live (default: {DEFAULT_RUN_DIR})")
    triton.set_defaults(func=cmd_triton)


def _addresses(info) -> list[str]:
    return [f"  http     http://{info.http_url}", f"  grpc     {info.grpc_url}", f"  metrics  {info.metrics_url}",
            f"  log      {info.log}"]


def _pinned(repository: str) -> str:
    """The versions each model's configs pin (what a restart serves), as a rollout last named them."""
    from recsys.deploy.repository import models, served_versions

    pinned = {name: served_versions(repository, name) for name in models(repository)}
    return ", ".join(f"{name} (versions {', '.join(map(str, v))})" for name, v in pinned.items() if v) or \
        "none (no rollout yet: each model serves its latest versions)"


def cmd_triton(args: argparse.Namespace) -> int:
    from recsys.deploy import server  # tritonclient only when needed

    if args.action == "start":
        info = server.start(args.repository, args.models, run_dir=args.run_dir, http_port=args.http_port,
                            grpc_port=args.grpc_port, metrics_port=args.metrics_port, config_name=args.config_name,
                            ready_timeout_s=args.timeout)
        configs = f"configs/{info.config_name}.pbtxt" if info.config_name else "config.pbtxt"
        print(f"tritonserver ready (pid {info.pid}) on {info.repository}, models: "
              f"{', '.join(info.models) or 'none'} ({configs})")
        print("\n".join(_addresses(info)))
        return 0
    if args.action == "stop":
        info = server.stop(args.run_dir, timeout_s=args.timeout)
        print(f"tritonserver (pid {info.pid}) stopped" if info else f"no tritonserver was running from {args.run_dir}")
        return 0
    current = server.status(args.run_dir)
    if args.json:
        print(json.dumps(None if current is None else asdict(current), indent=2))
    elif current is None:
        print(f"no tritonserver started from {args.run_dir}")
    elif not current.alive:
        print(f"tritonserver (pid {current.info.pid}) is not running (stale state in {args.run_dir}); "
              f"its log: {current.info.log}")
    else:
        print(f"tritonserver running (pid {current.info.pid}), {'ready' if current.ready else 'NOT ready'}, "
              f"since {current.info.started_at}, repository {current.info.repository}")
        print("\n".join(_addresses(current.info)))
        loaded = ", ".join(f"{name} (versions {', '.join(v)})" for name, v in sorted(current.loaded.items()))
        print(f"  loaded   {loaded or 'none'}")
        print(f"  pinned   {_pinned(current.info.repository)}")
    return 0 if current is not None and current.alive else 1
