"""Read the records of an offline W&B run file (``run-*.wandb``), so tests can check what was logged.

The file is a LevelDB-style log (the format W&B's own datastore writes): a 7-byte header, then 32 KiB
blocks of chunks, each with a 7-byte header (crc32, length, type) and a piece of a protobuf `Record`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B run file"
    out, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < 7:  # too little room for a chunk header: padding
            pos += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            break
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def logged_keys(path: str | Path) -> dict[str, set[str]]:
    """Keys seen in the run's config, history (metrics) and summary records, and its artifacts' types."""
    keys: dict[str, set[str]] = {"config": set(), "history": set(), "summary": set(), "artifact": set()}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind in ("config", "run"):
            update = r.config.update if kind == "config" else r.run.config.update
            keys["config"] |= {i.key or "/".join(i.nested_key) for i in update}
        elif kind == "history":
            keys["history"] |= {i.key or "/".join(i.nested_key) for i in r.history.item}
        elif kind == "summary":
            keys["summary"] |= {i.key or "/".join(i.nested_key) for i in r.summary.update}
        elif kind == "artifact":
            keys["artifact"].add(r.artifact.type)
    return keys


def run_info(path: str | Path) -> dict:
    """The run's group, name, config values (parsed from JSON) and whether it finished (has an exit record)."""
    info: dict = {"group": "", "name": "", "config": {}, "finished": False}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        info["finished"] |= kind == "exit"
        if kind == "run":
            info["group"], info["name"] = r.run.run_group, r.run.display_name
        if kind in ("config", "run"):
            update = r.config.update if kind == "config" else r.run.config.update
            info["config"] |= {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in update}
    return info
