"""Starting the application on a Ray cluster, with Ray Serve's throughput-optimized data plane.

Ray Serve's default path sends every HTTP request through its Python proxy actor and then to the ingress
replica. On the 2-core machine that hop cost more CPU than the rest of the request and the app saturated near
45 requests/s (scripts/bench_serving.py). Ray 2.55+ has a throughput-optimized mode
(``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``: gRPC between replicas, user code on the replica's own event loop, and
*direct ingress*: the ingress replica runs its own HTTP server). Ray documents it with HAProxy in front
(``RAY_SERVE_ENABLE_HA_PROXY=1``, the KubeRay manifest's setting); on one machine without HAProxy the ingress
replica itself listens on the configured port, and Ray's proxy stays up on another port as a fallback.

The variables are read when Ray's processes start, so they must be in the environment before the cluster does
(``recsys serve`` sets them before it starts a local cluster; a cluster started elsewhere keeps its own).
"""

from __future__ import annotations

import os
import time

import httpx

from recsys.serving_config import ServingConfig

APP_NAME = "recsys"


def direct_ingress_env(port: int) -> dict[str, str]:
    """The environment for throughput-optimized Serve with the (single) ingress replica on ``port``.

    Ray holds a stopping ingress replica open for 30 s and then quarantines its port for 150 s so that a load
    balancer in front can deregister it; with none in front and one port, that only keeps a redeployed
    ingress from starting. Here a redeploy stops the old replica once its requests are answered and the new one
    takes the port at once: a few seconds without an answer (connections refused). Changes that must not drop
    a request go through the replica's ``reconfigure`` instead.
    """
    return {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
            "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + 1),  # exclusive
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0.1",
            "RAY_SERVE_PORT_QUARANTINE_S": "0"}


def direct_ingress_port() -> int | None:
    """The port the ingress replica listens on itself, if this process's environment enables direct ingress."""
    if os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") != "1":
        return None
    low, high = (os.environ.get(f"RAY_SERVE_DIRECT_INGRESS_{e}_HTTP_PORT") for e in ("MIN", "MAX"))
    return int(low) if low and high and int(high) == int(low) + 1 else None


def run_app(config: ServingConfig, host: str, proxy_port: int, timeout_s: float = 120.0) -> str:
    """Deploy the app on the connected Ray cluster and return its URL once it answers.

    With direct ingress on (see `direct_ingress_env`) that is the ingress replica's own port, and Ray's proxy
    listens on ``proxy_port``; otherwise the proxy's ``proxy_port`` is the URL.
    """
    from ray import serve

    from serving.app import build_app

    serve.start(http_options={"host": host, "port": proxy_port})
    serve.run(build_app(config), name=APP_NAME, route_prefix=config.route_prefix)
    url = f"http://{host}:{direct_ingress_port() or proxy_port}"
    # the replica's own server starts with the replica; make sure it answers before handing it out
    wait_healthy(f"{url}{config.route_prefix.rstrip('/')}", timeout_s)
    return url


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
