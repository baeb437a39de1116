"""Free ports on 127.0.0.1 for the servers we start (Triton, the app's ingress replicas, HAProxy)."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

from recsys.errors import RecsysError

HOST = "127.0.0.1"


def _ephemeral_range() -> tuple[int, int]:
    """The range the kernel picks client connections' source ports from."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


# Ports for servers come from below the kernel's ephemeral range (and above Ray's worker ports, 10002-19999): a
# port there can be taken by any outgoing connection's source port, so a server restarted on its old port (Triton
# under the supervisor, an ingress replica Ray starts again) could find it taken.
SERVER_PORTS = (20000, 32000)


# the ports this process's environment keeps for Ray Serve's direct-ingress replicas (`serving.launch`): a server
# started on one of them later (a store, Triton, HAProxy) leaves a replica Ray starts again without a port
DIRECT_INGRESS_RANGE = ("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT", "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT")


def _kept_for_replicas() -> range:
    low, high = (os.environ.get(name) for name in DIRECT_INGRESS_RANGE)
    return range(int(low), int(high)) if low and high else range(0)


def free_port_block(n: int = 1, attempts: int = 200) -> int:
    """The first of ``n`` consecutive ports on 127.0.0.1 that are free now, outside the ephemeral range and the
    range kept for the app's ingress replicas."""
    kept = _kept_for_replicas()
    low, high = SERVER_PORTS
    ephemeral = _ephemeral_range()
    if not (high <= ephemeral[0] or low > ephemeral[1]):  # an unusual kernel setting: anywhere will do
        low, high = 1024, 65535 - n
    for _ in range(attempts):
        first = random.randint(low, high - n)
        if first < kept.stop and kept.start < first + n:
            continue
        sockets = []
        try:
            for port in range(first, first + n):
                sockets.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                sockets[-1].bind((HOST, port))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RecsysError(f"found no {n} consecutive free port(s) in {low}-{high} on {HOST}")


def free_port() -> int:
    """A port on 127.0.0.1 that is free now (see `free_port_block`)."""
    return free_port_block(1)
