"""Batches for training and evaluation, read from one worker's shards of a dataset version.

Each worker reads only its own shard files (``shard_index`` of ``n`` per split), reshuffled every
epoch with a seed, so N workers see disjoint data and a rerun sees the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from recsys.data.dataset import Dataset
from recsys.models.inputs import Batch, InputSpec, make_batch
from recsys.schema import FeatureSchema


@dataclass
class RetrievalBatch:
    """Positive (user, item) pairs: the user side, the item side, item indices and their log sampling
    probabilities (for the log-Q correction)."""

    users: Batch
    items: Batch
    item_ids: torch.Tensor  # (B,) int64 embedding rows of the items
    log_q: torch.Tensor  # (B,) float32

    def __len__(self) -> int:
        return len(self.item_ids)


def item_log_q(dataset: Dataset, schema: FeatureSchema) -> np.ndarray:
    """log P(item is a training positive), per item embedding row (unseen items get half a count)."""
    item = schema.item_id.name
    rows = dataset.manifest.cardinalities[schema.item_id.embedding_table]
    counts = np.zeros(rows, dtype=np.float64)
    for path in dataset.shards("retrieval", "train"):
        ids = pl.read_parquet(path, columns=[item])[item].to_numpy()
        counts += np.bincount(ids, minlength=rows)
    counts[counts == 0] = 0.5
    return np.log(counts / counts.sum()).astype(np.float32)


def click_rate(dataset: Dataset, schema: FeatureSchema) -> float:
    """The share of the ranking training split's impressions that were clicked (every shard)."""
    label = schema.label("dlrm").name
    return float(pl.scan_parquet(dataset.shards("ranking", "train")).select(pl.col(label).mean()).collect().item())


def read_shard(dataset: Dataset, task: str, split: str, shard_index: int, columns: list[str]) -> pl.DataFrame:
    shards = dataset.shards(task, split)
    if not 0 <= shard_index < len(shards):
        raise ValueError(f"shard {shard_index} does not exist: {task}/{split} has {len(shards)} shards")
    return pl.read_parquet(shards[shard_index], columns=columns)


def batches(frame: pl.DataFrame, batch_size: int, shuffle_seed: int | None = None,
            drop_last: bool = False, skip: int = 0) -> Iterator[pl.DataFrame]:
    """Row slices of ``frame``, in a seeded random order when ``shuffle_seed`` is given, from the ``skip``-th on."""
    if shuffle_seed is not None:
        frame = frame.sample(fraction=1.0, shuffle=True, seed=shuffle_seed)
    stop = frame.height - (frame.height % batch_size if drop_last else 0)
    for start in range(skip * batch_size, stop, batch_size):
        yield frame.slice(start, batch_size)


def ranking_batches(frame: pl.DataFrame, spec: InputSpec, batch_size: int,
                    shuffle_seed: int | None = None, skip: int = 0) -> Iterator[Batch]:
    for rows in batches(frame, batch_size, shuffle_seed, skip=skip):
        yield make_batch(rows, spec)


def retrieval_batches(frame: pl.DataFrame, user_spec: InputSpec, item_spec: InputSpec, item_column: str,
                      log_q: np.ndarray, batch_size: int, shuffle_seed: int | None = None,
                      skip: int = 0) -> Iterator[RetrievalBatch]:
    for rows in batches(frame, batch_size, shuffle_seed, drop_last=shuffle_seed is not None, skip=skip):
        ids = rows[item_column].to_numpy()
        yield RetrievalBatch(make_batch(rows, user_spec), make_batch(rows, item_spec),
                             torch.tensor(ids, dtype=torch.int64), torch.from_numpy(log_q[ids]))


class EpochBatches(torch.utils.data.IterableDataset):
    """Batches for a DataLoader (``batch_size=None``): ``make(seed, skip)`` yields one pass over the data, from its
    ``skip``-th batch on.

    An epoch is one pass, or with ``steps`` (training by steps) exactly ``steps`` batches, taken from as many passes
    as that needs, each with its own order: epoch ``e`` starts at batch ``e * steps`` of the sequence of passes.
    With ``shuffle``, pass ``p``'s order is seeded by ``seed + p``; the epoch is asked when its iteration starts,
    from the training state (the epochs finished, restored from a checkpoint), so a resumed run sees the same order
    as an uninterrupted one. (Lightning creates the first iterator of a run before any epoch hook, and skips
    ``on_train_epoch_start`` when resuming at an epoch's end.)
    """

    def __init__(self, make: Callable[[int | None, int], Iterator], shuffle: bool, seed: int = 0,
                 epoch: Callable[[], int] = lambda: 0, steps: int | None = None, per_pass: int | None = None):
        """``steps`` needs ``per_pass``, the batches in one pass."""
        super().__init__()
        if steps is not None and not (per_pass and per_pass > 0):
            raise ValueError(f"training by steps needs the batches of a pass, got {per_pass!r}")
        self.make, self.shuffle, self.seed, self.epoch = make, shuffle, seed, epoch
        self.steps, self.per_pass = steps, per_pass

    def _seed(self, n: int) -> int | None:
        return self.seed + n if self.shuffle else None

    def __iter__(self) -> Iterator:
        if self.steps is None:
            return self.make(self._seed(self.epoch()), 0)
        return self._steps(self.epoch() * self.steps)

    def _steps(self, first: int) -> Iterator:
        done, n = 0, first
        while done < self.steps:
            one_pass, skip = divmod(n, self.per_pass)
            before = done
            for batch in self.make(self._seed(one_pass), skip):
                yield batch
                done += 1
                if done == self.steps:
                    return
            if done == before:
                raise ValueError(f"pass {one_pass} from batch {skip} gave no batches (a pass should have "
                                 f"{self.per_pass})")
            n = (one_pass + 1) * self.per_pass
