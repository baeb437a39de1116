"""What a training run shows in the terminal: one progress bar and an epoch summary, not the workers' output.

Ray Train's workers (Lightning's bars, TorchRec's and FBGEMM's logs) and Ray's own processes print a lot, and
with several workers their lines interleave. Here each worker's whole output (Python and native, file
descriptors 1 and 2) goes to ``<run>/logs/worker-<rank>.log``; rank 0 appends its progress to
``<run>/progress.jsonl`` (`recsys.training.module.ProgressFile`); and the driver follows that file
(`ProgressBar`): one bar over the run's steps, a line per epoch with its loss and validation metrics.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

PROGRESS_FILE = "progress.jsonl"
LOG_DIR = "logs"


@contextlib.contextmanager
def output_in(path: Path) -> Iterator[None]:
    """For an in-process run: this process's Python output (stdout, stderr, logging, warnings) to ``path`` while
    it trains, then back (native code's own writes to the descriptors still reach the terminal)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    with open(path, "a") as out:
        handler = logging.StreamHandler(out)
        handlers, level = root.handlers[:], root.level
        root.handlers = [handler]
        logging.captureWarnings(True)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                yield
        finally:
            logging.captureWarnings(False)
            root.handlers, root.level = handlers, level


def send_output_to(path: Path) -> None:
    """Point this process's stdout and stderr (the descriptors too: native code writes there) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


class ProgressBar(threading.Thread):
    """In the driver: follows ``<run>/progress.jsonl`` and draws it (tqdm) until `stop`."""

    def __init__(self, run_dir: str | Path, title: str, every_s: float = 0.5, position: int = 0):
        super().__init__(name="recsys-progress", daemon=True)
        self.path = Path(run_dir) / PROGRESS_FILE
        self.title, self.every_s, self.position = title, every_s, position
        self._out = sys.stderr  # (an in-process run sends sys.stderr to its log while it trains: not the bar)
        self._halt = threading.Event()
        self._offset = self.path.stat().st_size if self.path.is_file() else 0  # (a resumed run's earlier lines)
        self._bar = None

    def _rows(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def _show(self, row: dict) -> None:
        from tqdm.auto import tqdm

        if row["kind"] == "step":
            total = max(1, row["steps"] * row["epochs"])
            if self._bar is None:
                self._bar = tqdm(total=total, desc=self.title, unit="step", dynamic_ncols=True, file=self._out,
                                 position=self.position)
            self._bar.n = min(total, row["epoch"] * row["steps"] + row["step"])
            if row.get("loss") is not None:
                self._bar.set_postfix_str(f"epoch {row['epoch'] + 1}/{row['epochs']}  loss {row['loss']:.4f}")
            self._bar.refresh()
        else:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in sorted(row["metrics"].items()))
            line = f"  epoch {row['epoch'] + 1}/{row['epochs']}: {shown}"
            if self._bar is not None:
                self._bar.write(line, file=self._out)
            else:
                print(line, file=self._out, flush=True)

    def run(self) -> None:
        while not self._halt.wait(self.every_s):
            for row in self._rows():
                self._show(row)

    def stop(self, finished: bool = True) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=10)
        for row in self._rows():
            self._show(row)
        if self._bar is not None:
            if finished:  # (steps are written at most every second: the last ones may not be)
                self._bar.n = self._bar.total
            self._bar.close()
