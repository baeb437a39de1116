"""The ANN index: exact below the size limit, HNSW tuned to the target recall above it, saved without pickle."""

import numpy as np
import pytest

from recsys.export import ann


def _clustered(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, dim))
    x = centres[rng.integers(0, 50, n)] + 0.5 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_small_catalogues_are_searched_exactly(tmp_path):
    items, queries = _clustered(2000), _clustered(50, seed=1)
    index, info = ann.build_index(items, queries)
    assert info.kind == "flat" and info.recall_at_100 == 1.0
    ann.save_index(tmp_path, index, np.arange(2000) + 7, info)
    loaded, ids, loaded_info = ann.load_index(tmp_path)
    assert loaded_info == info and ids[0] == 7 and ids.dtype == np.int64
    np.testing.assert_array_equal(loaded.search(queries, 100)[1], ann.exact_top_k(items, queries))


@pytest.mark.parametrize(("kind", "breadth"), [("hnsw", "efSearch"), ("ivf", "nprobe")])
def test_approximate_indexes_reach_the_target_recall_and_report_it(tmp_path, kind, breadth):
    items, queries = _clustered(20000), _clustered(200, seed=1)
    index, info = ann.build_index(items, queries, target_recall=0.95, kind=kind)
    assert info.kind == kind and info.recall_at_100 >= 0.95 and breadth in info.params
    found = index.search(queries, 100)[1]
    assert ann.recall_at_k(found, ann.exact_top_k(items, queries)) == pytest.approx(info.recall_at_100)
    ann.save_index(tmp_path, index, np.arange(20000), info)
    loaded, _, _ = ann.load_index(tmp_path)  # searches as widely as when it was measured
    assert ann.recall_at_k(loaded.search(queries, 100)[1], ann.exact_top_k(items, queries)) == info.recall_at_100


def test_recall_at_k_hand_worked():
    exact = np.array([[1, 2, 3, 4]])
    assert ann.recall_at_k(np.array([[4, 9, 1, -1]]), exact) == 0.5  # -1: FAISS found fewer than k
