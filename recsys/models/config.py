"""Model hyperparameters as frozen dataclasses (no torch here: configs load fast, e.g. in the CLI)."""

from __future__ import annotations

from dataclasses import dataclass

from recsys.config import ConfigError


@dataclass(frozen=True)
class TwoTowerConfig:
    """Hyperparameters of the two-tower model (the feature inputs come from the schema)."""

    embedding_dim: int = 32  # width of every embedding table
    tower_layers: tuple[int, ...] = (128,)  # hidden layers of each tower's MLP
    output_dim: int = 64  # size of the L2-normalised user / item embeddings
    temperature: float = 0.05  # softmax temperature of the in-batch loss
    logq_correction: bool = True  # subtract log(sampling probability) of each in-batch negative


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
    # once trained: Platt scaling of the logit on the validation split (`recsys.training.calibration`), so that the
    # probabilities are click rates; the order, and so AUC, is unchanged
    calibrate: bool = True

    def __post_init__(self) -> None:
        if self.interaction not in INTERACTIONS:
            raise ConfigError(f"interaction must be one of {INTERACTIONS}, got {self.interaction!r}")
        if self.dense_layers[-1] != self.embedding_dim:
            raise ConfigError(f"dense_layers must end with embedding_dim={self.embedding_dim}, "
                             f"got {self.dense_layers}")
        if self.over_layers[-1] != 1:
            raise ConfigError(f"over_layers must end with 1 (the logit), got {self.over_layers}")
