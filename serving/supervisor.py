"""Keeps the processes the app depends on running: Triton and the load balancer, restarted when they die.

Ray restarts a dead replica by itself; nothing restarted a dead ``tritonserver`` (the app answered "degraded"
until someone started it again) or a dead HAProxy. `Supervisor` checks each `Watched` process every
``every_s`` seconds from a thread of the ``recsys serve`` process and restarts the ones that died. A Triton that
was *stopped* (``recsys triton stop`` removes its state file) is left stopped: only a crash is repaired. Triton
comes back on its old ports with its old repository, and serves what the model configs name (the rollout writes
its versions there), so the app's gRPC client reconnects to the same address.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Watched:
    name: str
    alive: Callable[[], bool]
    restart: Callable[[], None]
    restarts: int = 0
    last_error: str | None = None


def triton(run_dir: str | Path) -> Watched:
    """The tritonserver started from ``run_dir`` (`recsys.deploy.server.start`)."""
    from recsys.deploy import server

    def alive() -> bool:
        info = server.read_state(run_dir)
        return info is None or server.is_alive(info.pid)  # no state file: stopped on purpose, nothing to do

    def restart() -> None:
        info = server.read_state(run_dir)
        if info is None:
            return
        (Path(run_dir) / server.STATE_FILE).unlink(missing_ok=True)  # the dead server's
        server.start(info.repository, info.models, run_dir=run_dir, http_port=info.http_port,
                     grpc_port=info.grpc_port, metrics_port=info.metrics_port,
                     config_name=info.config_name or "default")

    return Watched("tritonserver", alive, restart)


class Supervisor(threading.Thread):
    def __init__(self, watched: list[Watched], every_s: float = 0.5):
        super().__init__(name="recsys-supervisor", daemon=True)
        self.watched, self.every_s = watched, every_s
        self._halt = threading.Event()

    def check(self) -> None:
        """One round: restart whatever died (a failed restart is logged and tried again next round)."""
        for w in self.watched:
            try:
                if w.alive():
                    continue
                log.warning("%s died: restarting it", w.name)
                w.restart()
                w.restarts += 1
                w.last_error = None
                log.warning("%s restarted (%d restart(s) so far)", w.name, w.restarts)
            except Exception as exc:  # keep watching the others, try again next round
                w.last_error = f"{type(exc).__name__}: {exc}"
                log.error("could not restart %s: %s", w.name, w.last_error)

    def run(self) -> None:
        while not self._halt.wait(self.every_s):
            self.check()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=30)
