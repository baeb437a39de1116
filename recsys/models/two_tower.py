"""Two-tower retrieval: a user (query) tower and an item (candidate) tower, each TorchRec embedding
bags plus an MLP, with L2-normalised outputs. The towers are separate modules because serving exports
them separately (the query tower to ONNX, the item tower to an embedding matrix and an ANN index).

The loss, `TwoTowerTrain`, is an in-batch sampled softmax: every other item in the batch is a negative,
logits are divided by a temperature, and the log of each item's sampling probability is subtracted
(log-Q correction) so popular items are not over-penalised for appearing as negatives more often.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingBagCollection

from recsys.models.config import TwoTowerConfig
from recsys.models.inputs import Batch, InputSpec
from recsys.schema import FeatureSchema


def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class Tower(nn.Module):
    """Embedding bags of the tower's sparse features + its dense features -> MLP -> unit vector."""

    def __init__(self, spec: InputSpec, cardinalities: dict[str, int], cfg: TwoTowerConfig,
                 device: torch.device | None = None):
        super().__init__()
        self.ebc = EmbeddingBagCollection(tables=spec.embedding_tables(cardinalities, cfg.embedding_dim),
                                          device=device)
        in_dim = len(spec.sparse) * cfg.embedding_dim + len(spec.dense)
        self.mlp = mlp(in_dim, cfg.tower_layers, cfg.output_dim)

    def forward(self, batch: Batch) -> torch.Tensor:
        pooled = self.ebc(batch.sparse).values()  # (B, n_sparse * embedding_dim)
        return F.normalize(self.mlp(torch.cat([pooled, batch.dense], dim=1)), dim=-1)  # (B, output_dim)


class TwoTower(nn.Module):
    def __init__(self, schema: FeatureSchema, cardinalities: dict[str, int], cfg: TwoTowerConfig,
                 device: torch.device | None = None):
        super().__init__()
        self.user_spec = InputSpec.for_part(schema, "two_tower.user")
        self.item_spec = InputSpec.for_part(schema, "two_tower.item")
        self.user_tower = Tower(self.user_spec, cardinalities, cfg, device)
        self.item_tower = Tower(self.item_spec, cardinalities, cfg, device)

    def forward(self, users: Batch, items: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_tower(users), self.item_tower(items)


class TwoTowerTrain(nn.Module):
    """The training wrapper: in-batch sampled softmax with temperature and log-Q correction."""

    def __init__(self, model: TwoTower, cfg: TwoTowerConfig):
        super().__init__()
        self.model, self.cfg = model, cfg

    def forward(self, users: Batch, items: Batch, item_ids: torch.Tensor,
                log_q: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and logits for a batch of positive (user, item) pairs.

        Args:
            item_ids: (B,) ids of the positive items; the same item twice is not its own negative.
            log_q: (B,) log of each item's probability of being sampled (its share of positives).
        """
        u, v = self.model(users, items)  # (B, D), (B, D)
        logits = u @ v.T / self.cfg.temperature  # (B, B): row i scores user i against every item
        if self.cfg.logq_correction and log_q is not None:
            logits = logits - log_q[None, :]
        same_item = item_ids[None, :] == item_ids[:, None]
        logits = logits.masked_fill(same_item & ~torch.eye(len(item_ids), dtype=torch.bool,
                                                           device=logits.device), float("-inf"))
        target = torch.arange(len(item_ids), device=logits.device)
        return F.cross_entropy(logits, target), logits
