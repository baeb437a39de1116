"""Start, watch and stop the real ``tritonserver`` (the binary shipped in the ``nvidia-pytriton`` wheel).

``start`` runs it in the background against a model repository, on 127.0.0.1 with free ports (unless given),
in explicit model-control mode, and returns once ``/v2/health/ready`` answers. What another process needs to
find it again goes into ``<run_dir>/server.json`` (pid, ports, repository, log), so ``status`` and ``stop``
work from anywhere: ``stop`` sends SIGTERM to that pid, then SIGKILL to its process group (the server and its
Python-backend stubs, nothing else) after a timeout. The server's output goes to ``<run_dir>/tritonserver.log``.

The wheel's server has only the Python backend, so here every model runs its CPU twin
(``--model-config-name=cpu``, see ``recsys.deploy.repository``). The environment it needs (measured, see
FACTS.md): ``LD_LIBRARY_PATH`` starting with the interpreter's own lib folder (else the stub runs a foreign
libpython and fails with "'_thread.RLock' object has no attribute '_recursion_count'"), then the wheel's
bundled libraries; this interpreter's ``bin`` first on ``PATH`` (else the stub finds no numpy).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys.deploy.ports import HOST, free_port
from recsys.deploy.repository import CPU_CONFIG_NAME, models
from recsys.errors import RecsysError
from recsys.io import atomic_write_text
from recsys.processes import CHILDREN, cmdline, is_alive, proc_stat, wait_child

STATE_FILE = "server.json"
LOG_FILE = "tritonserver.log"
CONFIG_NAMES = ("auto", "cpu", "default")
# what the wheel's server logs on every machine without CUDA, errors included; not why anything failed
LOG_NOISE = ("CudaDriverHelper has not been initialized", "Unable to allocate pinned system memory",
             "CUDA memory pool disabled")
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes via a proxy


@dataclass(frozen=True)
class ServerInfo:
    """A started server: what ``server.json`` holds."""

    pid: int
    http_port: int
    grpc_port: int
    metrics_port: int
    repository: str
    log: str
    run_dir: str
    models: list[str] = field(default_factory=list)
    config_name: str = CPU_CONFIG_NAME  # "" = each model's config.pbtxt
    started_at: str = ""

    @property
    def http_url(self) -> str:
        """``host:port``, as ``tritonclient.http`` takes it."""
        return f"{HOST}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics_port}/metrics"


@dataclass(frozen=True)
class ServerStatus:
    info: ServerInfo
    alive: bool  # the process runs
    ready: bool  # /v2/health/ready answers 200
    loaded: dict[str, list[str]]  # model -> its READY versions


# ---------------------------------------------------------------- the binary and its environment


def pytriton_root() -> Path:
    """The ``tritonserver`` folder inside the installed ``pytriton`` package."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RecsysError("the nvidia-pytriton package is not installed; it ships the tritonserver binary")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise RecsysError(f"no tritonserver binary under {root} (nvidia-pytriton without its server?)")
    return root


def server_env() -> dict[str, str]:
    """The environment ``tritonserver`` and its Python-backend stubs need (see the module docstring)."""
    env = dict(os.environ)
    libs = [sysconfig.get_config_var("LIBDIR"), str(pytriton_root().parents[1] / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = ":".join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    env["PATH"] = ":".join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def prepare_backends(run_dir: Path) -> Path:
    """A backend directory with the Python backend and the stub built for this interpreter's Python version.

    The wheel keeps one stub per Python version aside; the backend looks for ``triton_python_backend_stub``
    beside its own library, so the pieces are copied together under the run directory.
    """
    root = pytriton_root()
    stub = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
        "triton_python_backend_stub"
    if not stub.is_file():
        raise RecsysError(f"nvidia-pytriton ships no Python-backend stub for Python "
                          f"{sys.version_info.major}.{sys.version_info.minor} ({stub})")
    target = run_dir / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    for source in [*(f for f in (root / "backends" / "python").iterdir() if f.is_file()), stub]:  # no __pycache__
        dest = target / source.name
        if not dest.exists() or dest.stat().st_size != source.stat().st_size:
            shutil.copy2(source, dest)
    return target.parent


def gpu_visible() -> bool:
    return any(Path("/dev").glob("nvidia[0-9]*"))


def resolve_config_name(config_name: str, backends: Path) -> str:
    """``auto``: each model's GPU ``config.pbtxt`` where it can run (a GPU and an ONNX Runtime backend), else
    the CPU twin. The wheel's server has no ONNX Runtime backend, so here ``auto`` always means ``cpu``."""
    if config_name not in CONFIG_NAMES:
        raise RecsysError(f"config name {config_name!r}: expected one of {CONFIG_NAMES}")
    if config_name == "auto":
        return "" if gpu_visible() and (backends / "onnxruntime").is_dir() else CPU_CONFIG_NAME
    return "" if config_name == "default" else config_name


# ---------------------------------------------------------------- processes


def _is_tritonserver(pid: int) -> bool:
    """Guards against a recycled pid: the process must still be a tritonserver."""
    return b"tritonserver" in cmdline(pid)


def _is_triton(pid: int) -> bool:
    return b"tritonserver" in cmdline(pid) or b"triton_python_backend_stub" in cmdline(pid)


def group_members(pgid: int) -> list[int]:
    """Live Triton processes (the server, its Python-backend stubs) in process group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        stat = proc_stat(int(entry.name)) if entry.name.isdigit() else None
        if stat is not None and stat[0] not in ("Z", "X") and int(stat[2]) == pgid and _is_triton(int(entry.name)):
            found.append(int(entry.name))
    return found


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with _NO_PROXY.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post(url: str, body: dict[str, Any], timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def is_ready(info: ServerInfo, timeout: float = 2.0) -> bool:
    try:
        return _get(f"http://{info.http_url}/v2/health/ready", timeout)[0] == 200
    except OSError:
        return False


def _log_errors(log: Path, limit: int = 5) -> str:
    """Why a server failed, from its log: its final ``error:`` line, else its last error lines (``E<mmdd> ...``)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    lines = [line for line in lines if not any(noise in line for noise in LOG_NOISE)]
    final = [line for line in lines if line.startswith("error:")]
    if final:
        return final[-1]
    errors = [line for line in lines if line[:1] == "E" and line[1:5].isdigit()]
    return "\n".join((errors or lines)[-limit:])


# ---------------------------------------------------------------- state


def read_state(run_dir: str | Path) -> ServerInfo | None:
    path = Path(run_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return ServerInfo(**json.loads(path.read_text()))
    except (ValueError, TypeError) as exc:
        raise RecsysError(f"{path} is not a server state file ({exc}); remove it if no server runs") from exc


def _write_state(info: ServerInfo) -> None:
    atomic_write_text(Path(info.run_dir) / STATE_FILE, json.dumps(asdict(info), indent=2))


# ---------------------------------------------------------------- start / status / stop


def start(repository: str | Path, model_names: list[str] | None = None, run_dir: str | Path = "runs/triton",
          http_port: int = 0, grpc_port: int = 0, metrics_port: int = 0, config_name: str = "auto",
          exit_timeout_s: int = 3, ready_timeout_s: float = 120.0, log_verbose: int = 0) -> ServerInfo:
    """Start ``tritonserver`` in the background and wait until it is ready.

    Args:
        repository: the Triton model repository.
        model_names: models to load at startup (explicit mode); default every model with a version.
        run_dir: where the state file and the log go; one server per run directory.
        http_port, grpc_port, metrics_port: 0 = a free port.
        config_name: ``auto`` (CPU twin unless a GPU and the ONNX Runtime backend are there), ``cpu`` or
            ``default`` (each model's ``config.pbtxt``).
        exit_timeout_s: how long a stopping server waits for in-flight requests.
        ready_timeout_s: how long to wait for ``/v2/health/ready``.
        log_verbose: Triton's verbose log level (0 = off).
    """
    repository = Path(repository).resolve()
    run_dir = Path(run_dir).resolve()
    if not repository.is_dir():
        raise RecsysError(f"model repository {repository} does not exist")
    available = models(repository)
    names = available if model_names is None else list(model_names)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise RecsysError(f"no model(s) {unknown} with a config and a version in {repository} "
                          f"(there: {available or 'none'})")
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = read_state(run_dir)
    if previous is not None and is_alive(previous.pid) and _is_tritonserver(previous.pid):
        raise RecsysError(f"a tritonserver already runs from {run_dir} (pid {previous.pid}, http "
                          f"{previous.http_url}); stop it first: recsys triton stop --run-dir {run_dir}")

    backends = prepare_backends(run_dir)
    name = resolve_config_name(config_name, backends)
    binary = pytriton_root() / "bin" / "tritonserver"
    log = run_dir / LOG_FILE
    chosen = (http_port, grpc_port, metrics_port)
    for attempt in range(3):  # free ports can be taken between choosing and binding; retry with others
        ports = [p or free_port() for p in chosen]
        while len(set(ports)) < 3:
            ports = [p or free_port() for p in chosen]
        cmd = [str(binary), f"--model-repository={repository}", "--model-control-mode=explicit",
               *[f"--load-model={n}" for n in names],
               f"--http-address={HOST}", f"--http-port={ports[0]}",
               f"--grpc-address={HOST}", f"--grpc-port={ports[1]}",
               f"--metrics-address={HOST}", f"--metrics-port={ports[2]}", "--allow-gpu-metrics=false",
               f"--exit-timeout-secs={exit_timeout_s}", f"--log-verbose={log_verbose}",
               f"--backend-directory={backends}",
               # a name of its own for the shared-memory regions of this server's Python-backend stubs
               f"--backend-config=python,shm-region-prefix-name=recsys_{uuid.uuid4().hex[:12]}_",
               "--disable-auto-complete-config"]
        if name:
            cmd.append(f"--model-config-name={name}")
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=server_env(), cwd=run_dir, start_new_session=True)
        CHILDREN[proc.pid] = proc
        info = ServerInfo(pid=proc.pid, http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2],
                          repository=str(repository), log=str(log), run_dir=str(run_dir), models=names,
                          config_name=name, started_at=datetime.now(UTC).isoformat(timespec="seconds"))
        _write_state(info)
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline and proc.poll() is None and not is_ready(info, timeout=1.0):
            time.sleep(0.2)
        if proc.poll() is None and is_ready(info):
            return info
        stop(run_dir)
        reason = _log_errors(log)
        # a port chosen here was taken meanwhile (not one the caller asked for): try other ones
        port_race = "already in use" in reason and not any(f":{p}'" in reason for p in chosen if p)
        if not (port_race and attempt < 2):
            what = (f"exited with code {proc.returncode}" if proc.returncode is not None
                    else f"was not ready after {ready_timeout_s:.0f} s")
            raise RecsysError(f"tritonserver {what}: {reason} (log: {log})")
    raise AssertionError("unreachable")


def running(run_dir: str | Path = "runs/triton") -> ServerInfo:
    """The server started from ``run_dir``; `RecsysError` naming the command to start one if none runs."""
    info = read_state(run_dir)
    if info is None or not (is_alive(info.pid) and _is_tritonserver(info.pid)):
        raise RecsysError(f"no running Triton in {run_dir} (start one: recsys triton start --run-dir {run_dir})")
    return info


def status(run_dir: str | Path = "runs/triton") -> ServerStatus | None:
    """The server started from ``run_dir``, whether it runs and is ready, and its loaded models; None if none."""
    info = read_state(run_dir)
    if info is None:
        return None
    alive = is_alive(info.pid) and _is_tritonserver(info.pid)
    ready = alive and is_ready(info)
    loaded: dict[str, list[str]] = {}
    if alive:
        try:
            code, body = _post(f"http://{info.http_url}/v2/repository/index", {"ready": True})
            for entry in json.loads(body) if code == 200 else []:
                loaded.setdefault(entry["name"], []).append(entry.get("version", ""))
        except (OSError, ValueError):
            pass
    return ServerStatus(info=info, alive=alive, ready=ready, loaded=loaded)


def stop(run_dir: str | Path = "runs/triton", timeout_s: float = 15.0) -> ServerInfo | None:
    """Stop the server started from ``run_dir``: SIGTERM, then SIGKILL to its process group after ``timeout_s``.

    Returns what was stopped (None if nothing ran). The state file is removed either way.
    """
    info = read_state(run_dir)
    if info is None:
        return None
    pid = info.pid
    if is_alive(pid) and _is_tritonserver(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    else:
        info = None  # a stale state file: nothing of ours runs
    # The server leads its own session (start_new_session), so its group id is its own pid. Triton processes
    # left in that group after the grace period (the server, or stubs it failed to end) are killed.
    members = group_members(pid)
    deadline = time.monotonic() + 5.0
    while members and time.monotonic() < deadline:  # stubs end shortly after their server
        time.sleep(0.1)
        members = group_members(pid)
    for member in members:
        os.kill(member, signal.SIGKILL)
    while members and group_members(pid) and time.monotonic() < deadline + 5.0:
        time.sleep(0.05)
    wait_child(pid)
    (Path(run_dir) / STATE_FILE).unlink(missing_ok=True)
    return info


# ---------------------------------------------------------------- explicit model control


def _client(info: ServerInfo):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(info.http_url, network_timeout=300.0)


def _repository_call(info: ServerInfo, action: str, name: str) -> None:
    from tritonclient.utils import InferenceServerException

    client = _client(info)
    try:
        getattr(client, f"{action}_model")(name)
    except InferenceServerException as exc:
        raise RecsysError(f"Triton could not {action} model {name!r}: {exc.message()}") from exc
    finally:
        client.close()


def load_model(info: ServerInfo, name: str) -> None:
    """Load (or reload, picking up new versions and configs) a model; old versions keep serving meanwhile."""
    _repository_call(info, "load", name)


def unload_model(info: ServerInfo, name: str) -> None:
    _repository_call(info, "unload", name)
