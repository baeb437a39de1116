"""``recsys serve``: the Ray Serve application (``serving/``) on a local or existing Ray cluster."""

from __future__ import annotations

import argparse

from recsys.schema import PROJECT_ROOT

DEFAULT_CONFIG = str(PROJECT_ROOT / "serving" / "config.yaml")
PATH_FIELDS = ("dataset", "retrieval_export", "event_log", "rollout_file", "run_dir", "triton_run_dir", "api_keys_file")


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "serve", help="serve recommendations over HTTP (Ray Serve: retrieve, filter, rank on Triton)",
        description="Start the Ray Serve application of serving/: POST /recommend, POST /feedback, GET /healthz, "
                    "/readyz, /metrics and /docs, on 127.0.0.1 by default. Triton must be running "
                    "(`recsys triton start`); until it is, answers are the retrieval order flagged degraded. A shop "
                    "without impressions has no ranker: --set ranker_model= serves the retrieval order as the answer. "
                    "Reads the application's args (the serving config and its overrides) and its HTTP options "
                    "from a Ray Serve config file. On a local cluster it runs `ingress_replicas` ingress replicas "
                    "(default 2), each with its own HTTP server (Ray Serve's throughput-optimized mode, direct "
                    "ingress), behind HAProxy on the configured port, which health-checks them and resends a request "
                    "caught on a replica that died; with --set triton_run_dir=DIR it restarts the Triton started "
                    "from DIR if it dies. RAY_SERVE_THROUGHPUT_OPTIMIZED=0 gives Ray's default proxy path instead.")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"Ray Serve config file whose first application runs serving.app (default: {DEFAULT_CONFIG})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a serving config field, e.g. triton_url=127.0.0.1:8001 (repeatable)")
    p.add_argument("--address", default=None, help="Ray cluster to join (default: start a local one)")
    p.add_argument("--detach", action="store_true", help="return once the app is up (with --address)")
    p.set_defaults(func=cmd_serve)


def serve_args(path: str, overrides: list[str]) -> tuple[dict, dict]:
    """(application args, http_options) of a Ray Serve config file, with ``overrides`` appended to ``set``."""
    from pathlib import Path

    import yaml

    from recsys.config import ConfigError

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"serve config {file} does not exist")
    raw = yaml.safe_load(file.read_text()) or {}
    apps = raw.get("applications") or []
    if not apps:
        raise ConfigError(f"{file}: no applications")
    args = dict(apps[0].get("args") or {})
    config = args.get("config")
    if config and not Path(config).is_absolute():  # relative to the project root, as `serve run` from there
        args["config"] = str(PROJECT_ROOT / config)
    args["set"] = [*(args.get("set") or []), *overrides]
    return args, dict(raw.get("http_options") or {})


def cmd_serve(args: argparse.Namespace) -> int:
    import os
    import signal
    import sys
    import time
    from dataclasses import replace
    from pathlib import Path

    import ray

    from recsys.deploy.ports import free_port, free_port_block
    from recsys.serving_config import from_args
    from serving import supervisor
    from serving.launch import SPARE_PORTS, direct_ingress_env, run_app

    app_args, http = serve_args(args.config, args.overrides)
    config = from_args(app_args)
    # paths relative to where the command runs, whatever the replicas' working directory is
    config = replace(config, **{name: str(Path(value).resolve()) for name in PATH_FIELDS
                                if (value := getattr(config, name))})
    given = {o.split("=", 1)[0].strip() for o in args.overrides}  # --set host/port win over the file's http_options
    host = config.host if "host" in given else http.get("host", config.host)
    port = config.port if "port" in given else http.get("port", config.port)
    config = replace(config, host=host, port=port)
    from recsys.store.server import URL_ENV
    from serving.auth import ApiKeys, AuthConfigError, is_loopback, keys_required

    if config.require_api_key == "false" and not is_loopback(host):
        raise AuthConfigError(f"require_api_key=false on {host}: writes (/feedback, /events) would be open to "
                              "anyone who can reach it; configure api_keys_file or $RECSYS_API_KEYS instead")
    ApiKeys(config.api_keys_file, keys_required(config.require_api_key, host))  # refused here, not per replica
    live = None
    if config.store.enabled and not (config.store.url or os.environ.get(URL_ENV)):  # the embedded store and co.
        from recsys.training.job import newest_dataset
        from serving.live_processes import start_live

        config = replace(config, store=replace(config.store, run_dir=str(Path(config.store.run_dir).resolve())))
        live = start_live(config, config.dataset or str(newest_dataset()))
    proxy_port = port
    if args.address:
        ray.init(address=args.address, include_dashboard=False)
    else:  # a local cluster: replicas on ports of their own behind HAProxy, unless RAY_SERVE_THROUGHPUT_OPTIMIZED=0
        if os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1") == "1":
            ports = config.ingress_replicas + SPARE_PORTS
            os.environ.update(direct_ingress_env(free_port_block(ports), ports))
            proxy_port = free_port()
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        running = run_app(config, host, proxy_port, run_dir=config.run_dir)
    except BaseException:
        if live is not None:
            live.stop()
        raise
    watched = [supervisor.triton(config.triton_run_dir)] if config.triton_run_dir else []
    watched += live.watched() if live is not None else []
    if running.balancer is not None:
        watched.append(supervisor.Watched("haproxy", running.balancer.alive, running.balancer.restart))
    guard = supervisor.Supervisor(watched)
    guard.start()
    print(f"serving on {running.url}  (POST /recommend, POST /feedback, GET /readyz, /metrics, /docs); "
          f"{config.ingress_replicas} ingress replica(s)"
          + (" behind HAProxy" if running.balancer else "")
          + (f"; restarting Triton ({config.triton_run_dir}) if it dies" if config.triton_run_dir else "")
          + (f"; live features from the store in {config.store.run_dir} (consumer and sink logs in "
             f"{config.run_dir})" if live is not None else ""), flush=True)
    if args.detach:
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop cleanly on SIGTERM too
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        guard.stop()
        running.stop()
        ray.shutdown()
        if live is not None:
            live.stop()
    return 0
