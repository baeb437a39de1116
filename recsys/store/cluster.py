"""A Valkey Cluster on this machine: ``nodes`` servers (`recsys.store.server.start` with ``cluster=True``, each in
``<run_dir>/node-<n>``, one password for all), the 16,384 hash slots split evenly between them, joined with
``CLUSTER MEET``. What a shop runs at scale is a managed cluster or one on Kubernetes; this one lets the same code
be tested against a real cluster: the state's keys are hash-tagged per user and per item, so every event's script
runs on one node, and a request's reads go to the nodes that hold its candidates (`recsys.store.state`).

`cluster_url` names its first node; `recsys.store.server.client_for` sees from the node that it is a cluster.
"""

from __future__ import annotations

import time
from pathlib import Path

from recsys.errors import RecsysError
from recsys.store import server

SLOTS = 16_384


def node_dirs(run_dir: str | Path, nodes: int) -> list[Path]:
    return [Path(run_dir) / f"node-{n}" for n in range(nodes)]


def start_cluster(run_dir: str | Path, nodes: int = 3, appendfsync: str = "everysec",
                  ready_timeout_s: float = 60.0) -> list[server.StoreInfo]:
    """Start ``nodes`` primaries (no replicas), assign each an even share of the slots, and wait until every node
    reports ``cluster_state:ok``."""
    import redis

    if nodes < 1:
        raise RecsysError(f"a cluster needs at least 1 node, got {nodes}")
    run_dir = Path(run_dir).resolve()
    secret = server.password(run_dir)
    started = []
    try:
        for folder in node_dirs(run_dir, nodes):
            if server.password(folder, initial=secret) != secret:
                raise RecsysError(f"{folder / server.PASSWORD_FILE} is not the cluster's password "
                                  f"({run_dir / server.PASSWORD_FILE}): remove the node's folder")
            started.append(server.start(folder, appendfsync=appendfsync, cluster=True))
        clients = [redis.Redis(host=i.host, port=i.port, password=secret, socket_timeout=5.0) for i in started]
        for n, client in enumerate(clients):
            if int(_cluster_info(client)["cluster_slots_assigned"]):
                continue  # a restarted node keeps its slots (nodes.conf)
            low, high = SLOTS * n // nodes, SLOTS * (n + 1) // nodes - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
        for info in started[1:]:
            clients[0].execute_command("CLUSTER", "MEET", info.host, info.port, info.port + 1)
        deadline = time.monotonic() + ready_timeout_s
        while not all(_ready(c, nodes) for c in clients):
            if time.monotonic() > deadline:
                raise RecsysError(f"the {nodes}-node cluster in {run_dir} did not reach cluster_state:ok within "
                                  f"{ready_timeout_s:.0f} s (logs: {', '.join(i.log for i in started)})")
            time.sleep(0.1)
        return started
    except BaseException:
        stop_cluster(run_dir, nodes)
        raise


def _cluster_info(client) -> dict[str, str]:
    return dict(line.split(":", 1) for line in client.execute_command("CLUSTER", "INFO").decode().split()
                if ":" in line)


def _ready(client, nodes: int) -> bool:
    info = _cluster_info(client)
    return info.get("cluster_state") == "ok" and int(info.get("cluster_known_nodes", 0)) == nodes


def cluster_url(run_dir: str | Path) -> str:
    """The URL of the cluster started from ``run_dir`` (its first node; a cluster client finds the rest)."""
    return server.store_url(node_dirs(run_dir, 1)[0])


def stop_cluster(run_dir: str | Path, nodes: int = 3) -> None:
    for folder in node_dirs(run_dir, nodes):
        server.stop(folder)
