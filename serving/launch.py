"""Starting the application on a Ray cluster, with Ray Serve's throughput-optimized data plane.

Ray Serve's default path sends every HTTP request through its Python proxy actor and then to the ingress
replica. On the 2-core machine that hop cost more CPU than the rest of the request and the app saturated near
45 requests/s (scripts/bench_serving.py). Ray 2.55+ has a throughput-optimized mode
(``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: gRPC between replicas, user code on the replica's own event loop, and
*direct ingress*: each ingress replica runs its own HTTP server). Ray documents it with HAProxy in front
(``RAY_SERVE_ENABLE_HA_PROXY=1``, the KubeRay manifest's setting); on one machine `run_app` starts HAProxy itself
(`serving.balancer`) on the configured port in front of the replicas' ports, and Ray's proxy stays up on another
port as a fallback.

The variables are read when Ray's processes start, so they must be in the environment before the cluster does
(``recsys serve`` sets them before it starts a local cluster; a cluster started elsewhere keeps its own).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from recsys.errors import RecsysError
from recsys.serving_config import ServingConfig
from serving.balancer import Balancer, BalancerConfig

APP_NAME = "recsys"


def direct_ingress_env(first_port: int, ports: int) -> dict[str, str]:
    """The environment for throughput-optimized Serve with the ingress replicas on ports
    ``first_port ..< first_port + ports`` (one per replica, and spares for a replica Ray restarts).

    Ray holds a stopping ingress replica open for 30 s and then quarantines its port for 150 s so that a load
    balancer in front can deregister it. Ours health-checks every port of the range every few hundred
    milliseconds, so here a stopping replica drains at once and its port is free again at once.
    """
    return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(first_port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(first_port + ports),  # exclusive
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0.1",
            "RAY_SERVE_PORT_QUARANTINE_S": "0"}


def direct_ingress_ports() -> tuple[int, ...] | None:
    """The ports the ingress replicas may listen on, if this process's environment enables direct ingress."""
    if os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") != "1":
        return None
    low, high = (os.environ.get(f"RAY_SERVE_DIRECT_INGRESS_{e}_HTTP_PORT") for e in ("MIN", "MAX"))
    return tuple(range(int(low), int(high))) if low and high and int(high) > int(low) else None


SPARE_PORTS = 4  # beyond one per ingress replica: for replicas Ray starts again (it may block a port it found taken)


@dataclass
class RunningApp:
    url: str  # where clients send requests: the load balancer (or Ray's proxy without direct ingress)
    balancer: Balancer | None

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop the balancer and the app, and return once no ingress replica answers any more (Serve's shutdown
        returns before its replicas have gone: an app started at once after would find them still answering)."""
        from ray import serve

        if self.balancer is not None:
            self.balancer.stop()
        serve.shutdown()
        ports, deadline = direct_ingress_ports(), time.monotonic() + timeout_s
        while ports and healthy_ports(ports) and time.monotonic() < deadline:
            time.sleep(0.2)


def run_app(config: ServingConfig, host: str, proxy_port: int, run_dir: str | Path, timeout_s: float = 180.0
            ) -> RunningApp:
    """Deploy the app on the connected Ray cluster and return it once it answers.

    With direct ingress on (see `direct_ingress_env`) the replicas listen on their own ports and HAProxy
    (`serving.balancer`) on ``host:config.port`` in front of them, its files in ``run_dir``; Ray's proxy listens
    on ``proxy_port``. Without direct ingress, Ray's proxy on ``proxy_port`` is the URL.
    """
    from ray import serve

    from serving.app import build_app

    serve.start(http_options={"host": host, "port": proxy_port})
    serve.run(build_app(config), name=APP_NAME, route_prefix=config.route_prefix)
    prefix = config.route_prefix.rstrip("/")
    ports = direct_ingress_ports()
    if ports is None:
        url = f"http://{host}:{proxy_port}"
        wait_healthy(f"{url}{prefix}", timeout_s)
        return RunningApp(url, None)
    if len(ports) < config.ingress_replicas:
        raise RecsysError(f"{len(ports)} direct-ingress port(s) for {config.ingress_replicas} ingress replicas")
    deadline = time.monotonic() + timeout_s
    while len(answering := healthy_ports(ports, prefix)) < config.ingress_replicas:  # each replica's own server
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(answering)} of {config.ingress_replicas} ingress replicas answered /healthz "
                               f"within {timeout_s:.0f} s (ports {ports[0]}-{ports[-1]})")
        time.sleep(0.2)
    balancer = Balancer(BalancerConfig(host, config.port, ports, max_body_bytes=config.max_body_bytes), run_dir)
    balancer.start()
    wait_healthy(f"{balancer.url}{prefix}", timeout_s)
    return RunningApp(balancer.url, balancer)


def healthy_ports(ports: tuple[int, ...], prefix: str = "") -> list[int]:
    """The ports of ``ports`` whose replica answers ``/healthz``."""
    up = []
    for port in ports:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{prefix}/healthz", timeout=1.0, trust_env=False).is_success:
                up.append(port)
        except httpx.HTTPError:
            pass
    return up


def wait_healthy(url: str, timeout_s: float = 120.0) -> None:
    """Return once ``<url>/healthz`` answers 2xx; TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0, trust_env=False).is_success:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer /healthz within {timeout_s:.0f} s")
        time.sleep(0.2)
