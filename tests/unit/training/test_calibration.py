"""Platt scaling against logs drawn from a known logistic model, and a hand-worked case."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from recsys.training.calibration import platt_fit


def _drawn(scale: float, shift: float, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(-40.0, 15.0, n)  # an overconfident ranker's logits: median probability ~1e-18
    clicks = rng.random(n) < 1 / (1 + np.exp(-(scale * logits + shift)))
    return logits, clicks


def test_the_fit_recovers_the_scale_and_shift_the_clicks_were_drawn_with():
    logits, clicks = _drawn(0.05, -3.5, 400_000)  # ~0.5% clicked
    fit = platt_fit(logits, clicks)
    # within 3 standard errors of the truth (Fisher information at it: 0.0015 and 0.047)
    assert fit.scale == pytest.approx(0.05, abs=0.0045) and fit.shift == pytest.approx(-3.5, abs=0.15)
    # and the maximum of the likelihood, as a derivative-free search finds it
    def nll(w):
        q = w[0] * logits + w[1]
        return np.mean(np.logaddexp(0, q) - clicks * q)

    found = minimize(nll, [0.05, -3.5], method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-14}).x
    assert fit.scale == pytest.approx(found[0], rel=1e-3) and fit.shift == pytest.approx(found[1], abs=1e-2)
    assert (fit.rows, fit.clicks) == (400_000, int(clicks.sum()))


def test_at_the_fit_the_mean_prediction_is_the_click_rate():
    # the intercept's score equation: sum(p) = sum(y) at the maximum of the likelihood
    logits, clicks = _drawn(0.02, -4.0, 20_000, seed=1)
    fit = platt_fit(logits, clicks)
    p = 1 / (1 + np.exp(-(fit.scale * logits + fit.shift)))
    assert p.mean() == pytest.approx(clicks.mean(), rel=1e-3)


def test_one_click_in_four_at_one_logit():
    # all rows share one logit: p is the click rate, whatever the scale; 1 click in 4 -> p = 0.25
    fit = platt_fit(np.array([-30.0, -30.0, -30.0, -30.0, 10.0, 10.0]), np.array([1, 0, 0, 0, 1, 1]))
    p = 1 / (1 + np.exp(-(fit.scale * np.array([-30.0, 10.0]) + fit.shift)))
    assert fit.scale > 0 and p[0] == pytest.approx(0.25, abs=0.02) and p[1] > 0.9


def test_nothing_to_fit_leaves_the_model_as_trained(caplog):
    assert platt_fit(np.zeros(5), np.zeros(5)) is None
    assert platt_fit(np.arange(6.0), np.array([1, 1, 1, 0, 0, 0])) is None  # ranked backwards
    assert "no clicks" not in caplog.text and "backwards" in caplog.text and "0 clicks in 5 rows" in caplog.text
    with pytest.raises(ValueError, match="1 not finite"):
        platt_fit(np.array([0.0, np.inf]), np.array([0, 1]))


def test_the_ranker_applies_it_in_its_output_layer(schema):
    from recsys.models.config import DLRMConfig
    from recsys.models.dlrm import Ranker
    from recsys.models.inputs import InputSpec

    spec = InputSpec.for_part(schema, "dlrm")
    model = Ranker(schema, {f.embedding_table: 50 for f in spec.sparse}, DLRMConfig()).eval()
    layer = model.dlrm.over_arch.model[-1]
    hidden = torch.randn(8, layer.in_features)
    before = layer(hidden)
    model.calibrate(0.02, -4.0)
    torch.testing.assert_close(layer(hidden), 0.02 * before - 4.0)
