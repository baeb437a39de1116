"""Drift: PSI and the tests against hand-worked examples, unseen / other shares, no drift on a sample of the
reference distribution, drift flagged on shifted data."""

import math

import numpy as np
import polars as pl
import pytest

from recsys.data.profile import profile_features
from recsys.monitoring.drift import DriftError, chi_square, drift_summary, feature_drift, ks_statistic, psi
from recsys.schema import Feature, Kind


def test_psi_hand_worked():
    # reference [0.5, 0.3, 0.2], live [0.4, 0.4, 0.2]:
    #   (0.4 - 0.5) * ln(0.4 / 0.5) = (-0.1) * (-0.2231436) = 0.0223144
    #   (0.4 - 0.3) * ln(0.4 / 0.3) = ( 0.1) * ( 0.2876821) = 0.0287682
    #   (0.2 - 0.2) * ln(1)                                  = 0
    #   PSI = 0.0510826
    assert psi([0.5, 0.3, 0.2], [0.4, 0.4, 0.2]) == pytest.approx(0.0510826, abs=1e-7)
    assert psi([0.5, 0.3, 0.2], [0.5, 0.3, 0.2]) == 0.0
    # an empty reference bucket counts as EPS = 1e-4:
    #   (0.49 - 0.5) * ln(0.49 / 0.5)      = (-0.01) * (-0.0202027) = 0.0002020
    #   (0.01 - 0.0001) * ln(0.01 / 0.0001) = 0.0099 * 4.6051702     = 0.0455912
    assert psi([0.5, 0.5, 0.0], [0.5, 0.49, 0.01]) == pytest.approx(0.0457932, abs=1e-7)
    with pytest.raises(ValueError, match="3 expected shares but 2"):
        psi([0.5, 0.3, 0.2], [0.5, 0.5])


CATEGORICAL = {"kind": "categorical", "count": 1000, "distinct": 3, "missing_share": 0.0,
               "top": {"1": 0.5, "2": 0.3, "3": 0.2}, "top_share": 1.0}


def _ints(name, counts: dict[int, int]) -> pl.DataFrame:
    return pl.DataFrame({name: np.repeat(list(counts), list(counts.values()))}, schema={name: pl.Int64})


def test_categorical_against_hand_worked_psi_and_chi_square():
    [r] = feature_drift({"c": CATEGORICAL}, _ints("c", {1: 40, 2: 40, 3: 20}))
    assert (r.name, r.kind, r.n, r.test) == ("c", "categorical", 100, "chi2")
    assert r.psi == pytest.approx(0.0510826, abs=1e-7)  # the example above
    # observed [40, 40, 20] against expected [50, 30, 20]:
    #   chi2 = 10^2/50 + 10^2/30 + 0 = 2 + 3.3333 = 5.3333; with 2 degrees of freedom sf(x) = exp(-x/2)
    assert r.statistic == pytest.approx(16 / 3)
    assert r.p_value == pytest.approx(math.exp(-8 / 3))
    assert r.unseen_share == 0.0 and r.other_share is None and r.missing_share == 0.0
    assert not r.drifted


def test_unseen_values_when_the_profile_lists_every_value():
    # 10% of live rows are value 4, which the training data never had; 5% are missing (index 0)
    [r] = feature_drift({"c": CATEGORICAL}, _ints("c", {1: 45, 2: 25, 3: 15, 4: 10, 0: 5}))
    assert r.unseen_share == pytest.approx(0.15)  # 0 was never seen either
    assert r.missing_share == pytest.approx(0.05) and r.missing_share_change == pytest.approx(0.05)
    assert r.drifted and any("unseen share 0.150" in reason for reason in r.reasons)
    # buckets 1, 2, 3, rest: e = [0.5, 0.3, 0.2, 0 -> 1e-4], a = [0.45, 0.25, 0.15, 0.15]
    expected = psi([0.5, 0.3, 0.2, 0.0], [0.45, 0.25, 0.15, 0.15])
    assert r.psi == pytest.approx(expected)
    # the chi-square test leaves the unseen bucket out: [45, 25, 15] against 85 * [0.5, 0.3, 0.2]
    assert r.statistic == pytest.approx(2.5 ** 2 / 42.5 + 0.5 ** 2 / 25.5 + 2 ** 2 / 17)


def test_truncated_top_reports_other_share_not_unseen():
    profile = {"c": {"kind": "categorical", "count": 1000, "distinct": 10, "missing_share": 0.0,
                     "top": {"1": 0.5, "2": 0.3}, "top_share": 0.8}}
    [same] = feature_drift(profile, _ints("c", {1: 50, 2: 30, 7: 12, 9: 8}))
    assert same.unseen_share is None
    assert same.other_share == pytest.approx(0.2) and same.reference_other_share == pytest.approx(0.2)
    assert same.psi == pytest.approx(0.0, abs=1e-12) and not same.drifted
    assert "top 2 of 10" in same.note
    [moved] = feature_drift(profile, _ints("c", {1: 30, 2: 30, 7: 40}))
    # buckets 1, 2, other: (0.3-0.5) ln(0.3/0.5) + 0 + (0.4-0.2) ln(0.4/0.2) = 0.1021651 + 0.1386294
    assert moved.psi == pytest.approx(0.2407946, abs=1e-7)
    assert moved.other_share == pytest.approx(0.4) and moved.drifted


DENSE = {"kind": "dense", "count": 100, "null_share": 0.0, "mean": 2.0, "std": 1.0, "min": 0.0, "max": 4.0,
         "quantiles": {"p0": 0.0, "p25": 1.0, "p50": 2.0, "p75": 3.0, "p100": 4.0},
         "histogram": {"inner_edges": [1.0, 2.0, 3.0], "counts": [25, 25, 25, 25]}}


def test_dense_psi_over_the_profile_histogram_and_ks():
    live = pl.DataFrame({"x": [0.5] * 10 + [1.5] * 20 + [2.5] * 30 + [3.5] * 40})
    [r] = feature_drift({"x": DENSE}, live)
    # bins [<1, 1-2, 2-3, >=3]: reference 0.25 each, live [0.1, 0.2, 0.3, 0.4]
    #   (0.1-0.25) ln(0.4) + (0.2-0.25) ln(0.8) + (0.3-0.25) ln(1.2) + (0.4-0.25) ln(1.6)
    #   = 0.1374436 + 0.0111572 + 0.0091161 + 0.0705006 = 0.2282175
    assert r.psi == pytest.approx(0.2282175, abs=1e-7) and r.drifted
    # F_live at the quantiles 1, 2, 3 is 0.1, 0.3, 0.6 where any reference CDF is >= 0.25, 0.5, 0.75:
    # the largest gap is 0.5 - 0.3 = 0.2
    assert (r.test, r.statistic) == ("ks", pytest.approx(0.2))
    assert 0 < r.p_value < 1e-3
    assert r.mean_shift == pytest.approx((0.05 + 0.3 + 0.75 + 1.4) - 2.0)


def test_dense_bins_are_left_closed_like_the_profile():
    # a value on an edge belongs to the bin above it (numpy searchsorted side="right" in the profile)
    [r] = feature_drift({"x": DENSE}, pl.DataFrame({"x": [0.0, 1.0, 2.0, 3.0] * 25}))
    assert r.psi == pytest.approx(0.0)


def test_dense_null_share_change_is_flagged():
    live = pl.DataFrame({"x": [0.5, 1.5, 2.5, 3.5] * 20 + [None] * 20}, schema={"x": pl.Float32})
    [r] = feature_drift({"x": DENSE}, live)
    assert r.n == 100 and r.psi == pytest.approx(0.0)
    assert r.missing_share == pytest.approx(0.2) and r.drifted
    assert r.reasons == ("missing share changed by +0.200 (limit 0.05)",)


def test_ks_statistic_band():
    q = {"p0": 0.0, "p50": 0.0, "p90": 1.0, "p100": 2.0}  # a point mass of at least half at 0
    # knots 0, 1, 2; F(0) in [0.5, 0.9], F(1) in [0.9, 1]
    assert ks_statistic(q, np.array([0.0, 0.7, 1.0]), np.array([0.7, 0.95, 1.0])) == 0.0
    # only 40% at 0: 0.5 - 0.4 = 0.1 short of the band
    assert ks_statistic(q, np.array([0.0, 0.85, 1.0]), np.array([0.4, 0.95, 1.0])) == pytest.approx(0.1)
    # 95% below 1, where at most 90% may lie: 0.05 over
    assert ks_statistic(q, np.array([0.0, 0.95, 1.0]), np.array([0.6, 0.97, 1.0])) == pytest.approx(0.05)


def test_chi_square_pools_small_buckets():
    # expected 90, 6, 2, 2 for 100 rows: the last two (< 5) become one bucket of 4
    stat, p = chi_square(np.array([90.0, 6.0, 0.0, 4.0]), np.array([0.9, 0.06, 0.02, 0.02]))
    assert stat == pytest.approx(0.0) and p == pytest.approx(1.0)


def test_history_empty_share_and_mean_length():
    profile = {"h": {"kind": "history", "count": 100, "mean_length": 2.0, "empty_share": 0.2}}
    rows = [[0, 0, 0]] * 20 + [[5, 6, 0]] * 50 + [[5, 0, 0]] * 30
    for dtype in (pl.Array(pl.Int64, 3), pl.List(pl.Int64)):
        [r] = feature_drift(profile, pl.DataFrame({"h": rows}, schema={"h": dtype}))
        assert r.psi == pytest.approx(0.0) and r.missing_share == pytest.approx(0.2)
        assert r.mean_shift == pytest.approx((50 * 2 + 30) / 100 - 2.0)
        assert not r.drifted and "empty, non-empty" in r.note
    [r] = feature_drift(profile, pl.DataFrame({"h": [[0, 0, 0]] * 50 + [[5, 6, 7]] * 50}))
    # (0.5-0.2) ln(0.5/0.2) + (0.5-0.8) ln(0.5/0.8) = 0.3 * 0.9162907 + 0.3 * 0.4700036 = 0.2748872 + 0.1410011
    assert r.psi == pytest.approx(0.4158883, abs=1e-7) and r.drifted


# ---- a profile built by the real profiler from a synthetic shop ----

FEATURES = [
    Feature("device", Kind.CATEGORICAL, "attribute", {"table": "users", "column": "device"}, "vocab", {}, None,
            ("dlrm",)),
    Feature("brand", Kind.CATEGORICAL, "attribute", {"table": "items", "column": "brand"}, "vocab", {}, None,
            ("dlrm",)),
    Feature("price", Kind.DENSE, "attribute", {"table": "items", "column": "price"}, "dense",
            {"transform": "identity"}, None, ("dlrm",)),
    Feature("views", Kind.DENSE, "user_event_count", {"event_types": ["view"]}, "dense",
            {"transform": "log1p"}, None, ("dlrm",)),
    Feature("history", Kind.HISTORY, "user_history", {"event_types": ["purchase"], "length": 8}, "embedding",
            {"table": "item_id"}, None, ("dlrm",)),
    Feature("click", Kind.LABEL, "clicked", {}, None, {}, None, ("dlrm",)),
]
DEVICE = np.array([0.6, 0.3, 0.1])


def _shop(n: int, seed: int, device=DEVICE, price_shift: float = 0.0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    brand = np.minimum(rng.zipf(1.3, n), 300)  # 300 brands, a long tail: the profile keeps the top 50
    length = np.where(rng.random(n) < 0.15, 0, rng.integers(1, 9, n))
    history = rng.integers(1, 1000, (n, 8))
    history[np.arange(8)[None, :] >= length[:, None]] = 0  # (n, 8), padded with 0
    views = np.where(rng.random(n) < 0.3, 0, rng.poisson(6, n))  # many zeros: a point mass
    return pl.DataFrame({
        "device": rng.choice([1, 2, 3], n, p=device / device.sum()),
        "brand": brand,
        "price": (rng.normal(3.5, 1.0, n) + price_shift).astype(np.float32),
        "views": np.log1p(views).astype(np.float32),
        "history": pl.Series(history, dtype=pl.Array(pl.Int64, 8)),
        "click": (rng.random(n) < 0.07).astype(np.float32),
    })


@pytest.fixture(scope="module")
def reference():
    return profile_features(_shop(200_000, seed=0).lazy(), FEATURES)


def test_the_reference_data_itself_shows_nothing(reference):
    results = feature_drift(reference, _shop(200_000, seed=0))
    assert [r.name for r in results] == ["device", "brand", "price", "views", "history"]  # the label is skipped
    for r in results:
        assert r.psi == pytest.approx(0.0, abs=1e-12), r
        assert r.statistic is not None and r.statistic < 1e-6, r  # chi2 and the KS band are 0 too


def test_no_drift_on_a_sample_of_the_reference_distribution(reference):
    results = feature_drift(reference, _shop(50_000, seed=1))
    assert not [r for r in results if r.drifted], results
    assert max(r.psi for r in results) < 0.01
    summary = drift_summary(results)
    assert summary["drift.n_drifted"] == 0 and summary["drift.drifted_features"] == []
    assert summary["drift.max_psi"] < 0.01 and summary["drift.max_unseen_share"] == 0.0


def test_shifted_data_is_flagged(reference):
    # device 2's share doubled (0.3 -> 0.6, the others scaled down), the price moved by one std
    live = _shop(50_000, seed=2, device=np.array([0.3, 0.6, 0.1]), price_shift=1.0)
    by_name = {r.name: r for r in feature_drift(reference, live)}
    assert by_name["device"].drifted and by_name["device"].psi > 0.3  # about 2 * 0.3 * ln 2 = 0.42
    assert by_name["price"].drifted and by_name["price"].psi > 0.5
    assert by_name["price"].mean_shift == pytest.approx(1.0, abs=0.05)
    assert by_name["price"].statistic > 0.3  # KS: Phi(0.5) - Phi(-0.5) = 0.38 in theory
    assert not by_name["brand"].drifted and not by_name["views"].drifted and not by_name["history"].drifted
    summary = drift_summary(list(by_name.values()))
    assert summary["drift.drifted_features"] == ["device", "price"]
    assert summary["drift.max_psi_feature"] == "price"
    assert summary["drift.psi.device"] == by_name["device"].psi


def test_lazy_frames_and_feature_selection(reference):
    live = _shop(1_000, seed=3).lazy()
    assert [r.name for r in feature_drift(reference, live, ["price", "click"])] == ["price", "click"]
    with pytest.raises(DriftError, match=r"\['colour'\] are not in the reference profile"):
        feature_drift(reference, live, ["colour"])
    with pytest.raises(DriftError, match=r"\['device'\] are not columns of the live frame"):
        feature_drift(reference, live.drop("device"), ["device"])


def test_empty_live_frame(reference):
    results = feature_drift(reference, _shop(10, seed=4).head(0))
    assert all(r.n == 0 and r.psi is None and not r.drifted for r in results)
    assert drift_summary(results)["drift.max_psi"] == 0.0
