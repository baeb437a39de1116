"""DLRM ranking: TorchRec's DLRM (dot interaction) or DLRM-DCN (DCN-v2 cross interaction) over the
schema's dlrm inputs; the click label trains it with binary cross-entropy in `DLRMTrain`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingBagCollection
from torchrec.models.dlrm import DLRM, DLRM_DCN

from recsys.models.config import DLRMConfig
from recsys.models.inputs import Batch, InputSpec
from recsys.schema import FeatureSchema


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

    def start_at_click_rate(self, click_rate: float) -> None:
        """Set the logit's bias to the log-odds of the training click rate: an untrained model then predicts about
        the base rate instead of 0.5, and on a low-CTR shop the first steps are not spent learning it."""
        if not 0 < click_rate < 1:
            raise ValueError(f"the click rate must be between 0 and 1 (exclusive), got {click_rate}")
        with torch.no_grad():
            self.dlrm.over_arch.model[-1].bias.fill_(math.log(click_rate / (1 - click_rate)))  # the last Linear

    def calibrate(self, scale: float, shift: float) -> None:
        """Make every logit ``scale * logit + shift`` (in the output layer itself): the Platt scaling of
        `recsys.training.calibration`; ``scale > 0`` keeps the order of any two rows."""
        last = self.dlrm.over_arch.model[-1]
        with torch.no_grad():
            last.weight.mul_(scale)
            last.bias.mul_(scale).add_(shift)


class DLRMTrain(nn.Module):
    """The training wrapper: binary cross-entropy on the click label."""

    def __init__(self, model: Ranker):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        assert batch.labels is not None, "a training batch needs labels"
        logits = self.model(batch)
        return F.binary_cross_entropy_with_logits(logits, batch.labels), logits
