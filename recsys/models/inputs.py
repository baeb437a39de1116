"""Model inputs from dataset shards: which columns feed which model part, and batches of tensors.

A `Batch` holds the dense features as one float tensor, every sparse feature (ids, categoricals,
histories) in one TorchRec `KeyedJaggedTensor`, and the labels. Histories are stored padded with 0;
here the padding is dropped, so a history is a bag of its real items (an empty bag pools to zeros).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.modules.embedding_configs import PoolingType

from recsys.schema import Feature, FeatureSchema, Kind


@dataclass(frozen=True)
class InputSpec:
    """The inputs of one model part, in schema order."""

    sparse: tuple[Feature, ...]
    dense: tuple[Feature, ...]
    label: Feature | None = None

    @classmethod
    def for_part(cls, schema: FeatureSchema, part: str) -> InputSpec:
        features = schema.used_by(part)
        label = schema.label(part) if part == "dlrm" else None
        return cls(sparse=tuple(f for f in features if f.is_sparse),
                   dense=tuple(f for f in features if not f.is_sparse), label=label)

    @property
    def columns(self) -> list[str]:
        return [f.name for f in (*self.sparse, *self.dense, *([self.label] if self.label else []))]

    def embedding_tables(self, cardinalities: dict[str, int], dim: int) -> list[EmbeddingBagConfig]:
        """One table per embedding table of the schema used here; features sharing it share the table."""
        tables: dict[str, list[str]] = {}
        for f in self.sparse:
            tables.setdefault(f.embedding_table, []).append(f.name)
        return [EmbeddingBagConfig(name=f"t_{table}", embedding_dim=dim, num_embeddings=cardinalities[table],
                                   feature_names=names, pooling=PoolingType.MEAN)
                for table, names in tables.items()]


@dataclass
class Batch:
    dense: torch.Tensor  # (B, n_dense) float32
    sparse: KeyedJaggedTensor  # one key per sparse feature
    labels: torch.Tensor | None = None  # (B,) float32

    def __len__(self) -> int:
        return self.dense.shape[0]

    def to(self, device: torch.device) -> Batch:
        labels = None if self.labels is None else self.labels.to(device)
        return Batch(self.dense.to(device), self.sparse.to(device), labels)


def make_batch(df: pl.DataFrame, spec: InputSpec) -> Batch:
    """Tensors for the rows of ``df`` (a slice of a shard)."""
    n = df.height
    if spec.dense:
        dense = torch.from_numpy(df.select([f.name for f in spec.dense]).to_numpy().astype(np.float32))
    else:
        dense = torch.zeros((n, 0), dtype=torch.float32)
    values, lengths = [], []
    for f in spec.sparse:
        column = df[f.name].to_numpy()
        if f.kind == Kind.HISTORY:  # (B, length), padded with 0
            present = column != 0
            values.append(column[present])  # row by row, newest first
            lengths.append(present.sum(axis=1))
        else:
            values.append(column)
            lengths.append(np.ones(n, dtype=np.int64))
    sparse = KeyedJaggedTensor.from_lengths_sync(
        keys=[f.name for f in spec.sparse],
        values=torch.from_numpy(np.concatenate(values).astype(np.int64)),
        lengths=torch.from_numpy(np.concatenate(lengths).astype(np.int32)),
    )
    labels = None if spec.label is None else torch.from_numpy(df[spec.label.name].to_numpy().astype(np.float32))
    return Batch(dense, sparse, labels)
