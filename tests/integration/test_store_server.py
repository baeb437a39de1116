"""The embedded online store: a real valkey-server started by `recsys.store.server` (password, loopback, AOF)."""

from __future__ import annotations

import os
import signal
import stat
import time

import pytest
import redis

from recsys.errors import RecsysError
from recsys.processes import cmdline, is_alive
from recsys.store import server

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
