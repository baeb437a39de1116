"""Early stopping's bookkeeping: which validation metric a model watches, how many epoch checkpoints a run must keep
for the best to survive, and which of them the run keeps. (Lightning's `EarlyStopping` decides when to stop.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsys.errors import RecsysError
from recsys.training.config import TrainConfig

MONITOR = {"dlrm": "val/auc", "two-tower": "val/recall@100"}  # each model's validation metric, higher is better


def monitor_of(task: str, cfg: TrainConfig) -> str | None:
    """The validation metric early stopping watches (higher is better); None without early stopping."""
    return (cfg.monitor or MONITOR[task]) if cfg.patience else None


def checkpoints_kept(cfg: TrainConfig) -> int:
    """Epoch checkpoints kept: with early stopping, the best epoch is at most ``patience`` epochs before the last
    (else training would have stopped), so keeping ``patience + 1`` of the newest keeps it."""
    return max(cfg.keep_checkpoints, cfg.patience + 1)


def kept_epoch(epochs: list[tuple[Path, dict[str, Any]]], monitor: str | None) -> tuple[Path, dict[str, Any]]:
    """The checkpoint the run keeps among its epochs' (checkpoint, metrics), oldest first, the deleted ones
    included: with a ``monitor``, the best epoch by it (the earliest of equals), else the last."""
    there = [(path, metrics) for path, metrics in epochs if path.exists()]
    if not there:
        raise RecsysError("the run reported no checkpoint that still exists")
    if monitor is None:
        return there[-1]
    scored = [(path, metrics) for path, metrics in there if monitor in metrics]
    if not scored:
        raise RecsysError(f"early stopping watches {monitor!r}, which no epoch reported (they reported "
                          f"{sorted(there[-1][1])}); set monitor to one of them")
    return max(scored, key=lambda pm: (pm[1][monitor], -scored.index(pm)))
