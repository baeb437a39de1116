"""Background servers this project starts (``tritonserver``, ``valkey-server``): whether a pid still runs, what
its command line is (a recycled pid is not ours), and the children this process started, reaped once ended."""

from __future__ import annotations

import subprocess
from pathlib import Path

CHILDREN: dict[int, subprocess.Popen] = {}  # servers this process started, reaped on stop


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first), None if there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def reap(pid: int) -> None:
    """Collect ``pid``'s exit status if this process started it and it has ended (no zombie left)."""
    child = CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        CHILDREN.pop(pid, None)


def is_alive(pid: int) -> bool:
    reap(pid)
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def wait_child(pid: int, timeout_s: float = 5.0) -> None:
    """Wait for a server this process started to be collected (after it was told to stop)."""
    child = CHILDREN.pop(pid, None)
    if child is not None:
        child.wait(timeout=timeout_s)
