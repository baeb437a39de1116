"""`Encoders.array` (what the live store encodes a request with) against `Encoders.expr` (what the offline builder
encodes with), on every encoding, nulls included, and against hand-worked values."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recsys.data.encoders import Encoders, FittedEncoding
from recsys.schema import Feature, Kind

PARTS = ("dlrm",)


def _feature(name, kind, encoding, params=None, default=None, op="user_event_count") -> Feature:
    return Feature(name, kind, op, {"event_types": ["view"]}, encoding, params or {}, default, PARTS)


ENCODERS = Encoders("test", {
    "hashed": FittedEncoding("hash", cardinality=11),
    "words": FittedEncoding("vocab", cardinality=4, vocab=["b", "a", "c"]),
    "numbers": FittedEncoding("vocab", cardinality=3, vocab=[30, 10]),
    "bucketed": FittedEncoding("buckets", cardinality=4, boundaries=[1.5, 10.0]),
    "clipped": FittedEncoding("clip", cardinality=33, params={"max": 31}),
})
CASES = [  # feature, raw values (None: null)
    (_feature("hashed", Kind.CATEGORICAL, "hash"), [-7, 0, 10, 9_223_372_036_854_775_807, None, 23]),
    (_feature("words", Kind.CATEGORICAL, "vocab"), ["a", "c", "zz", None, "b"]),
    (_feature("numbers", Kind.CATEGORICAL, "vocab", default=10), [30, 10, 7, None]),
    (_feature("bucketed", Kind.CATEGORICAL, "buckets"), [-1.0, 1.5, 1.6, 10.0, 99.0, None]),
    (_feature("clipped", Kind.CATEGORICAL, "clip", default=0), [-3, 0, 5, 31, 40, None]),
    (_feature("views", Kind.DENSE, "dense", {"transform": "log1p"}, default=0.0), [0, 3, -2, None, 1e9]),
    (_feature("share", Kind.DENSE, "dense", {"transform": "identity"}, default=0.05), [0.25, None, 1.0]),
]


def _arrays(values: list) -> tuple[np.ndarray, np.ndarray]:
    missing = np.array([v is None for v in values])
    fill = next(v for v in values if v is not None)
    return np.array([fill if v is None else v for v in values]), missing


@pytest.mark.parametrize(("feature", "values"), CASES, ids=[f.name for f, _ in CASES])
def test_arrays_encode_as_the_polars_expression(feature, values):
    expected = pl.select(ENCODERS.expr(feature, pl.lit(pl.Series(values, strict=False))).alias("v"))["v"]
    got = ENCODERS.array(feature, *_arrays(values))
    assert got.dtype == (np.float32 if feature.kind == Kind.DENSE else np.int64)
    if feature.kind == Kind.DENSE:
        np.testing.assert_array_equal(got, expected.cast(pl.Float32).fill_null(np.nan).to_numpy())
    else:
        assert got.tolist() == expected.to_list()


def test_hand_worked_values():
    hashed, words, bucketed, clipped, views = (f for f, _ in CASES[:1] + CASES[1:2] + CASES[3:6])
    assert ENCODERS.array(hashed, np.array([-7, 23])).tolist() == [4, 4]  # -7 % 10 = 3, 23 % 10 = 3; + 1
    assert ENCODERS.array(words, np.array(["a", "zz"])).tolist() == [2, 0]  # "a" is the 2nd word; unknown 0
    assert ENCODERS.array(bucketed, np.array([1.5, 1.49, 10.0])).tolist() == [2, 1, 3]  # right-closed buckets
    assert ENCODERS.array(clipped, np.array([40])).tolist() == [32]
    np.testing.assert_allclose(ENCODERS.array(views, np.array([np.e - 1, -5.0])), [1.0, 0.0], rtol=1e-6)


def test_a_history_is_its_indices_and_a_missing_one_padding():
    history = Feature("h", Kind.HISTORY, "user_history", {"event_types": ["view"], "length": 3}, "embedding",
                      {"table": "item_id"}, None, PARTS)
    got = ENCODERS.array(history, np.array([[4, 2, 0], [1, 1, 1]]), np.array([False, True]))
    assert got.tolist() == [[4, 2, 0], [0, 0, 0]]
