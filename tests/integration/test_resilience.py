"""What a dead process costs shoppers: under 25 requests/s, SIGKILL one of the two ingress replicas (HAProxy in
front resends what it caught and stops sending to it; Ray starts a new one), then SIGKILL tritonserver (answers
are the retrieval order, flagged degraded, until the supervisor has started it again). Target: at most 1% of the
requests go unanswered, and no 5xx. Driven by counts: the kills happen at request numbers."""

from __future__ import annotations

import os
import signal
import time

import pytest

from recsys.deploy import server
from serving import supervisor
from serving.launch import direct_ingress_ports, healthy_ports
from tests.integration.conftest import INGRESS_REPLICAS, known_users, recommend
from tests.integration.load import run_load, tally
from tests.integration.processes import titled

pytestmark = pytest.mark.integration
RATE, N = 25.0, 500  # requests per second, requests per test


def ingress_replica_pids() -> list[int]:
    """Our cluster's ingress replica processes."""
    return titled(b"ServeReplica:recsys:Ingress", os.getpid())


def recommend_request(users: list[int]):
    return lambda i: ("/recommend", {"user_id": users[i % len(users)], "k": 5})


def wait_for(condition, what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(0.25)


def test_a_killed_ingress_replica_costs_at_most_one_percent_and_no_5xx(app, http):
    ports = direct_ingress_ports()
    wait_for(lambda: len(healthy_ports(ports)) >= INGRESS_REPLICAS, "both replicas answering")
    before = ingress_replica_pids()
    assert len(before) == INGRESS_REPLICAS, before
    killed = []

    def kill_one() -> None:
        os.kill(before[0], signal.SIGKILL)
        killed.append(before[0])

    outcomes = run_load(app.url, N, RATE, recommend_request(known_users(app, 50)), at={100: kill_one})
    counts = tally(outcomes)
    lost = len(outcomes) - counts["ok"] - counts["degraded"]
    print(f"killed ingress replica {killed}: {dict(counts)}")
    assert killed and len(outcomes) == N
    assert not [o for o in outcomes if o.status is not None and o.status >= 500], counts
    assert lost <= N // 100, counts  # at most 1% of the requests
    # Ray starts a replacement; HAProxy finds it by its health check
    wait_for(lambda: len(healthy_ports(ports)) >= INGRESS_REPLICAS, "a replacement replica answering")
    assert killed[0] not in ingress_replica_pids()
    assert recommend(http, user_id=known_users(app, 1)[0], k=3)["items"]


def test_a_killed_triton_is_restarted_and_costs_no_request(app, http):
    run_dir = app.work / "triton"
    watchdog = supervisor.Supervisor([supervisor.triton(run_dir)], every_s=0.2)
    watchdog.start()
    first = server.read_state(run_dir)
    killed = []

    def kill_triton() -> None:
        os.kill(first.pid, signal.SIGKILL)
        killed.append(first.pid)

    try:
        outcomes = run_load(app.url, N, RATE, recommend_request(known_users(app, 50)), at={100: kill_triton})
        wait_for(lambda: watchdog.watched[0].restarts == 1, "the supervisor restarting Triton")
        wait_for(lambda: http.get("/readyz").status_code == 200, "the app ready again")
    finally:
        watchdog.stop()
    counts = tally(outcomes)
    print(f"killed tritonserver {killed}: {dict(counts)}; restarted as pid {server.read_state(run_dir).pid}")
    assert killed and len(outcomes) == N
    assert counts["ok"] + counts["degraded"] == N, counts  # every request answered: ranked or degraded
    assert counts["degraded"] > 0  # (Triton was down for a while: the retrieval order, flagged)
    restarted = server.read_state(run_dir)
    assert restarted.pid != first.pid and restarted.grpc_port == first.grpc_port  # same address: clients reconnect
    answer = recommend(http, user_id=known_users(app, 1)[0], k=3)
    assert not answer["degraded"] and answer["items"][0]["score"] is not None
