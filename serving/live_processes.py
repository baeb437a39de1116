"""What ``recsys serve`` runs beside the app when it serves live features (``store.enabled``, no ``store.url``):
the embedded Valkey (`recsys.store.server`), bootstrapped once from the dataset's history, the feature consumer
and the event-log sink, each its own process with its own log under the serving run folder, all restarted by the
supervisor when they die (the consumer and the sink pick up where they left: what they had not acknowledged is
handled again, counted once).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from recsys.serving_config import ServingConfig
from serving.supervisor import Watched


def _recsys() -> str:
    return str(Path(sys.executable).with_name("recsys"))


@dataclass
class Child:
    """A child process started from ``command``, its output appended to ``log``."""

    name: str
    command: list[str]
    log: Path
    process: subprocess.Popen | None = field(default=None, init=False)

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def watched(self) -> Watched:
        return Watched(self.name, self.alive, self.start)


@dataclass
class LiveProcesses:
    children: list[Child]
    store_started: bool  # whether we started the store (and stop it again)
    store_dir: str

    def watched(self) -> list[Watched]:
        from recsys.store import server

        def store_alive() -> bool:
            info = server.read_state(self.store_dir)
            return info is None or server.is_alive(info.pid)  # stopped on purpose: left stopped

        def store_restart() -> None:
            info = server.read_state(self.store_dir)
            if info is not None:
                (Path(self.store_dir) / server.STATE_FILE).unlink(missing_ok=True)
                server.start(self.store_dir, port=info.port, bind=info.host, appendfsync=info.appendfsync)

        return [Watched("valkey-server", store_alive, store_restart), *(c.watched() for c in self.children)]

    def stop(self) -> None:
        from recsys.store import server

        for child in self.children:
            child.stop()
        if self.store_started:
            server.stop(self.store_dir)


def start_live(config: ServingConfig, dataset_path: str, progress: bool = True) -> LiveProcesses:
    """The store (started unless one runs from ``store.run_dir``), its bootstrap (once per namespace), the
    consumer and the sink. Returns what to supervise and stop."""
    from recsys.data.dataset import Dataset
    from recsys.schema import load_schema
    from recsys.store import server
    from recsys.store.consumer import LiveContext, bootstrap

    store = config.store
    started = server.read_state(store.run_dir) is None or not server.status(store.run_dir)["alive"]
    if started:
        server.start(store.run_dir, appendfsync=store.appendfsync)
    client = server.connect(store.run_dir)
    schema = load_schema()
    dataset = Dataset.open(dataset_path, schema)
    if client.hget(f"{store.namespace}:meta", "bootstrapped_from") is None:
        bootstrap(client, LiveContext.of(dataset, schema, store.namespace), dataset, progress=progress)
    common = ["--run-dir", store.run_dir, "--namespace", store.namespace]
    run_dir = Path(config.run_dir)
    children = [
        Child("feature consumer", [_recsys(), "store", "consume", "--dataset", str(dataset.path), *common],
              run_dir / "consumer.log"),
        Child("event-log sink", [_recsys(), "store", "sink", "--event-log", config.event_log, *common],
              run_dir / "sink.log"),
    ]
    for child in children:
        child.start()
    return LiveProcesses(children, started, store.run_dir)
