"""Trained TorchRec models as plain serving modules that export to ONNX.

TorchRec's `EmbeddingBagCollection` and `KeyedJaggedTensor` do not export, and ``nn.EmbeddingBag``
exports as ONNX ``Loop``s that run 20-100x slower than a gather. So every table becomes a plain
tensor looked up by indexing (``nn.Embedding`` style), and a multi-hot history arrives as fixed-length
ids padded with 0 whose mask gives the mean of the real ones (an empty history pools to zeros, as a
TorchRec bag does). Inputs are one tensor per schema feature: ids ``(B, 1)`` or ``(B, L)`` int64,
dense values ``(B, 1)`` float32, named after the feature; the batch axis is dynamic.

The dense layers are the trained modules themselves (TorchRec's DenseArch / InteractionArch /
OverArch and the towers' MLPs are plain torch), so only the embedding lookup is rewritten.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingBagCollection

from recsys.export.signature import TensorSpec, tensor_specs
from recsys.models.dlrm import Ranker
from recsys.models.inputs import InputSpec
from recsys.models.two_tower import Tower
from recsys.schema import Feature, Kind


def input_specs(spec: InputSpec) -> tuple[TensorSpec, ...]:
    """The serving inputs of a model part, in schema order (sparse, then dense features)."""
    return tensor_specs((*spec.sparse, *spec.dense))


class PooledLookup(nn.Module):
    """Embedding-bag pooling (MEAN) of an EmbeddingBagCollection's features, by gathers.

    The output is ``(B, n_features * D)`` in the collection's feature order, as TorchRec's
    ``KeyedTensor.values()``.
    """

    def __init__(self, ebc: EmbeddingBagCollection, features: tuple[Feature, ...]):
        super().__init__()
        by_name = {f.name: f for f in features}
        self.order: list[str] = []
        self.tables = nn.ParameterDict()
        self.table_of: dict[str, str] = {}
        self.history: set[str] = set()
        for config in ebc.embedding_bag_configs():
            weight = ebc.embedding_bags[config.name].weight.detach().clone()
            self.tables[config.name] = nn.Parameter(weight, requires_grad=False)
            for name in config.feature_names:
                self.order.append(name)
                self.table_of[name] = config.name
                if by_name[name].kind == Kind.HISTORY:
                    self.history.add(name)

    def forward(self, ids: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = []
        for name in self.order:
            table, x = self.tables[self.table_of[name]], ids[name]
            if name in self.history:  # (B, L) padded with 0: the mean of the real ids
                mask = (x != 0).unsqueeze(-1).to(table.dtype)
                total = (table[x] * mask).sum(dim=1)
                pooled.append(total / mask.sum(dim=1).clamp(min=1.0))
            else:
                pooled.append(table[x[:, 0]])
        return torch.cat(pooled, dim=1)


def _split(spec: InputSpec, tensors: tuple[torch.Tensor, ...]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    n_sparse = len(spec.sparse)
    ids = {f.name: t for f, t in zip(spec.sparse, tensors[:n_sparse], strict=True)}
    dense = torch.cat(tensors[n_sparse:], dim=1) if spec.dense else tensors[0].new_zeros((len(tensors[0]), 0),
                                                                                         dtype=torch.float32)
    return ids, dense


class ServingRanker(nn.Module):
    """The DLRM ranker: inputs in `input_specs` order -> click probability ``(B, 1)``."""

    def __init__(self, ranker: Ranker):
        super().__init__()
        self.spec = ranker.spec
        dlrm = ranker.dlrm
        self.lookup = PooledLookup(dlrm.sparse_arch.embedding_bag_collection, self.spec.sparse)
        if self.lookup.order != list(dlrm.sparse_arch.sparse_feature_names):
            raise AssertionError("TorchRec's sparse feature order differs from the collection's")
        self.n_sparse, self.dim = len(self.lookup.order), dlrm.sparse_arch.D
        self.dense_arch, self.inter_arch, self.over_arch = dlrm.dense_arch, dlrm.inter_arch, dlrm.over_arch

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        ids, dense = _split(self.spec, tensors)
        sparse = self.lookup(ids).reshape(-1, self.n_sparse, self.dim)
        logits = self.over_arch(self.inter_arch(dense_features=self.dense_arch(dense), sparse_features=sparse))
        return torch.sigmoid(logits)


class ServingTower(nn.Module):
    """A two-tower tower: inputs in `input_specs` order -> L2-normalised embedding ``(B, output_dim)``."""

    def __init__(self, tower: Tower, spec: InputSpec):
        super().__init__()
        self.spec = spec
        self.lookup = PooledLookup(tower.ebc, spec.sparse)
        self.mlp = tower.mlp

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        ids, dense = _split(self.spec, tensors)
        return F.normalize(self.mlp(torch.cat([self.lookup(ids), dense], dim=1)), dim=-1)
