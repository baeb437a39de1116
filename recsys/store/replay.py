"""``recsys events replay``: publish a validated export's events to the stream, in time order, as fast as the store
takes them or at a given rate (a backfill, a simulation, the tests)."""

from __future__ import annotations

import time
from pathlib import Path

import polars as pl

from recsys.data.features import EVENT_ID, TS
from recsys.errors import RecsysError
from recsys.store.stream import EventStream


def replay_source(path: str | Path) -> Path:
    """The events file of a validated export folder (``recsys data validate``'s output) or a dataset (its
    validated source), or ``path`` itself if it is a Parquet file."""
    path = Path(path)
    if path.is_file() and path.suffix == ".parquet":
        return path
    if (path / "events.parquet").is_file():
        return path / "events.parquet"
    if (path / "manifest.json").is_file():
        from recsys.data.dataset import Dataset
        from recsys.data.reencoding import validated_source

        return validated_source(Dataset.open(path)) / "events.parquet"
    raise RecsysError(f"{path}: not a validated export (no events.parquet), a dataset or a Parquet file; a shop's "
                      "raw export is validated first: recsys data validate")


def replay(stream: EventStream, path: str | Path, rate: float | None = None, limit: int | None = None,
           batch: int = 1_000, progress: bool = False) -> int:
    """Publish the events of ``path`` (`replay_source`) in (timestamp, event_id) order; ``rate`` events a second
    (None: as fast as possible). Returns how many were published."""
    from tqdm import tqdm

    events = pl.read_parquet(replay_source(path)).sort(TS, EVENT_ID)
    if limit is not None:
        events = events.head(limit)
    bar = tqdm(total=events.height, desc="replay", unit="event", disable=not progress)
    started, sent = time.monotonic(), 0
    for chunk in events.iter_slices(batch):
        if rate:
            wait = started + sent / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        sent += stream.publish(chunk.iter_rows(named=True), atomic=False, batch=batch)
        bar.update(chunk.height)
    bar.close()
    return sent
