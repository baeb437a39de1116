"""Finding this test session's own processes (our Ray cluster's workers and replicas), not another cluster's."""

from __future__ import annotations

from pathlib import Path


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether ``pid`` is in ``ancestor``'s process tree."""
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


def titled(title: bytes, ancestor: int) -> list[int]:
    """The live processes under ``ancestor`` whose command line holds ``title`` (Ray sets e.g.
    ``ray::ServeReplica:recsys:Ingress``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if title in cmdline and descends_from(int(entry.name), ancestor):
            found.append(int(entry.name))
    return sorted(found)
