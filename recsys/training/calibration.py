"""Platt scaling of the ranker: its logit ``z`` becomes ``a * z + b``, fitted on the validation split once training
has ended, so that its probabilities are the shop's click rates.

A ranker that memorises a small shop's few clicks (its id tables, a clicked-item history) is overconfident by
orders of magnitude: on the low-CTR shop (`configs/data/low_ctr.yaml`) its median validation logit was -36 (a
probability of 1e-16) at a 0.4% click rate, a few rows near 1 carried the mean, and the mean prediction was 2.3x
the click rate on the validation day and 1.1x on the test day. Platt (1999) fits ``a`` and ``b`` by logistic
regression of the validation labels on the logits: ``a`` (there ≈ 0.02) undoes the overconfidence, ``b`` sets the
level, and at the fit the mean prediction over the validation split is its click rate. ``a > 0`` keeps the order
of any two rows, so AUC, GAUC and NDCG are unchanged; log-loss is what improves (on a shop's export, 0.026 against
0.077 for a shift of the logit alone). It assumes the click rate of the days served is that of the validation day,
and needs clicks on it: a validation split without both clicks and non-clicks, or logits that rank it backwards
(``a <= 0``), leave the model as trained, with a warning.

The fit is saved in the checkpoint's ``recsys.json`` (``calibration``) and `recsys.training.checkpoint.load_model`
applies it to the output layer: evaluation, export, ONNX and Triton all see the calibrated model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression

CALIBRATION_KEY = "calibration"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Calibration:
    """The calibrated logit is ``scale * logit + shift``; ``rows`` and ``clicks``: what it was fitted on."""

    scale: float
    shift: float
    rows: int
    clicks: int


def platt_fit(logits: np.ndarray, labels: np.ndarray) -> Calibration | None:
    """Maximum-likelihood ``scale`` and ``shift`` of ``sigmoid(scale * logits + shift)`` for ``labels`` (0/1); None
    (with a warning) when they cannot calibrate: no clicks, nothing but clicks, or a scale that is not positive."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(np.int8)
    if z.shape != y.shape or not np.isfinite(z).all():
        raise ValueError(f"calibration needs one finite logit per label, got {z.size} logits "
                         f"({int((~np.isfinite(z)).sum())} not finite) for {y.size} labels")
    clicks = int(y.sum())
    if not 0 < clicks < y.size:
        log.warning("not calibrated: the validation split has %d clicks in %d rows (both are needed)", clicks, y.size)
        return None
    centre, spread = float(z.mean()), float(z.std()) or 1.0  # (standardised: logits of ±200 fit as well as ±2)
    fit = LogisticRegression(C=np.inf, max_iter=1000).fit(((z - centre) / spread)[:, None], y)
    scale = float(fit.coef_[0, 0]) / spread
    if not scale > 0:
        log.warning("not calibrated: the logits rank the validation split backwards (Platt scale %.3g)", scale)
        return None
    return Calibration(scale=scale, shift=float(fit.intercept_[0]) - scale * centre, rows=int(y.size), clicks=clicks)


def fit_calibration(model, dataset, label: str, batch_size: int = 8192) -> Calibration | None:
    """`platt_fit` of ``model`` (an unsharded `recsys.models.dlrm.Ranker`) on ``dataset``'s validation split."""
    from recsys.evaluation.ranking import ranking_logits

    val = dataset.read("ranking", "val")
    return platt_fit(ranking_logits(model, val, batch_size), val[label].to_numpy())
