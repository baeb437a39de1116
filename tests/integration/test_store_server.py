"""The embedded online store: a real valkey-server started by `recsys.store.server` (password, loopback, AOF)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from recsys.errors import RecsysError
from recsys.processes import cmdline, is_alive
from recsys.store import cluster, server

pytestmark = pytest.mark.integration


@pytest.fixture
def run_dir(tmp_path):
    yield tmp_path
    server.stop(tmp_path)


def test_store_needs_its_password_and_listens_on_loopback_only(run_dir):
    info = server.start(run_dir)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=info.host, port=info.port).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=info.host, port=info.port, password="not-the-password").ping()
    client = redis.from_url(server.store_url(run_dir))
    assert client.ping()
    assert client.config_get("bind") == {"bind": "127.0.0.1"}
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    secret = server.password(run_dir)
    assert secret.encode() not in cmdline(info.pid)  # read from the 0600 config file, not the command line
    for name in (server.PASSWORD_FILE, server.CONFIG_FILE):
        assert stat.S_IMODE(os.stat(run_dir / name).st_mode) == 0o600
    with pytest.raises(RecsysError, match="already runs"):
        server.start(run_dir)
    assert server.status(run_dir)["answers"] is True
    assert server.stop(run_dir).pid == info.pid and not is_alive(info.pid)
    assert server.status(run_dir) is None
    with pytest.raises(RecsysError, match="recsys store start"):
        server.store_url(run_dir)


def test_every_acknowledged_write_survives_kill_9_with_appendfsync_always(run_dir):
    info = server.start(run_dir, appendfsync="always")
    client = redis.from_url(server.store_url(run_dir))
    pipe = client.pipeline(transaction=False)
    for n in range(2_000):
        pipe.xadd("events", {"n": n})
        pipe.hincrby("counts", "user:7", 1)
    pipe.execute()
    os.kill(info.pid, signal.SIGKILL)
    while is_alive(info.pid):
        time.sleep(0.01)
    restarted = server.start(run_dir, appendfsync="always")  # the stale state file of the killed one is replaced
    assert restarted.pid != info.pid
    client = redis.from_url(server.store_url(run_dir))  # same password: the run folder's
    assert client.xlen("events") == 2_000
    assert [int(e[1][b"n"]) for e in client.xrange("events")] == list(range(2_000))
    assert int(client.hget("counts", "user:7")) == 2_000


def test_bad_settings_are_refused_with_what_is_expected(run_dir):
    with pytest.raises(RecsysError, match="appendfsync 'no': expected one of everysec, always"):
        server.start(run_dir, appendfsync="no")


def test_a_local_cluster_from_the_cli_has_every_node_password_protected_on_loopback(tmp_path):
    """``recsys store start --nodes 3``: three primaries sharing one password, the slots split between them; a
    client named by any node's URL is a cluster client; ``stop --nodes 3`` stops them all."""
    recsys = [str(Path(sys.executable).with_name("recsys")), "store"]
    started = subprocess.run([*recsys, "start", "--nodes", "3", "--run-dir", str(tmp_path)], capture_output=True,
                             text=True, timeout=120)
    try:
        assert started.returncode == 0 and "cluster_state:ok" in started.stdout, started.stderr[-2000:]
        nodes = [server.running(folder) for folder in cluster.node_dirs(tmp_path, 3)]
        secret = server.password(tmp_path)
        for info in nodes:
            with pytest.raises(redis.AuthenticationError):
                redis.Redis(host=info.host, port=info.port).ping()
            node = redis.Redis(host=info.host, port=info.port, password=secret)
            assert node.config_get("bind") == {"bind": "127.0.0.1"}
            assert server.password(info.run_dir) == secret
        ranges = redis.Redis(host=nodes[0].host, port=nodes[0].port, password=secret).execute_command(
            "CLUSTER SLOTS")  # [start, end, [host, port, id]] per range
        slots = sorted((r[0], r[1]) for r in ranges)
        assert {r[2][1] for r in ranges} == {info.port for info in nodes}
        assert slots[0][0] == 0 and slots[-1][1] == cluster.SLOTS - 1 and len(slots) == 3
        assert all(a[1] + 1 == b[0] for a, b in pairwise(slots))  # every slot served
        client = server.client_for(cluster.cluster_url(tmp_path))
        assert isinstance(client, RedisCluster)
        for n in range(30):  # keys of many slots, each answered by the node that holds it
            client.set(f"k{n}", n)
        assert [int(client.get(f"k{n}")) for n in range(30)] == list(range(30))
        assert all(node.redis_connection.dbsize() > 0 for node in client.get_primaries())
    finally:
        stopped = subprocess.run([*recsys, "stop", "--nodes", "3", "--run-dir", str(tmp_path)],
                                 capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0 and not any(is_alive(info.pid) for info in nodes)
