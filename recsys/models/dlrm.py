"""DLRM ranking: TorchRec's DLRM (dot interaction) or DLRM-DCN (DCN-v2 cross interaction) over the
schema's dlrm inputs; the click label trains it with binary cross-entropy in `DLRMTrain`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingBagCollection
from torchrec.models.dlrm import DLRM, DLRM_DCN

from recsys.config import ConfigError
from recsys.models.inputs import Batch, InputSpec
from recsys.schema import FeatureSchema

INTERACTIONS = ("dot", "dcn")


@dataclass(frozen=True)
class DLRMConfig:
    """Hyperparameters of the ranker (the feature inputs come from the schema)."""

    embedding_dim: int = 16  # width of every embedding table (DLRM needs one width)
    dense_layers: tuple[int, ...] = (64, 16)  # bottom MLP; its last width must equal embedding_dim
    over_layers: tuple[int, ...] = (64, 32, 1)  # top MLP; ends in one logit
    interaction: str = "dot"  # dot (pairwise dot products) | dcn (DCN-v2 low-rank cross layers)
    dcn_layers: int = 3
    dcn_rank: int = 16

    def __post_init__(self) -> None:
        if self.interaction not in INTERACTIONS:
            raise ConfigError(f"interaction must be one of {INTERACTIONS}, got {self.interaction!r}")
        if self.dense_layers[-1] != self.embedding_dim:
            raise ConfigError(f"dense_layers must end with embedding_dim={self.embedding_dim}, "
                             f"got {self.dense_layers}")
        if self.over_layers[-1] != 1:
            raise ConfigError(f"over_layers must end with 1 (the logit), got {self.over_layers}")


class Ranker(nn.Module):
    """Click logit for each (user, item, context) row."""

    def __init__(self, schema: FeatureSchema, cardinalities: dict[str, int], cfg: DLRMConfig,
                 device: torch.device | None = None):
        super().__init__()
        self.spec = InputSpec.for_part(schema, "dlrm")
        ebc = EmbeddingBagCollection(tables=self.spec.embedding_tables(cardinalities, cfg.embedding_dim),
                                     device=device)
        common = {"embedding_bag_collection": ebc, "dense_in_features": len(self.spec.dense),
                  "dense_arch_layer_sizes": list(cfg.dense_layers), "over_arch_layer_sizes": list(cfg.over_layers),
                  "dense_device": device}
        if cfg.interaction == "dcn":
            self.dlrm = DLRM_DCN(**common, dcn_num_layers=cfg.dcn_layers, dcn_low_rank_dim=cfg.dcn_rank)
        else:
            self.dlrm = DLRM(**common)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.dlrm(batch.dense, batch.sparse).squeeze(-1)  # (B,) logits


class DLRMTrain(nn.Module):
    """The training wrapper: binary cross-entropy on the click label."""

    def __init__(self, model: Ranker):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        assert batch.labels is not None, "a training batch needs labels"
        logits = self.model(batch)
        return F.binary_cross_entropy_with_logits(logits, batch.labels), logits
