"""The approximate-nearest-neighbour index over item embeddings (FAISS, inner product).

The index type follows the catalogue size: exact search (``IndexFlatIP``) while it is small enough to
scan, HNSW graphs beyond that (its ``efSearch`` set to the smallest value that reaches the target recall
on sample queries). Row i of the index is item ``item_ids[i]``. Files: ``index.faiss`` (FAISS's own
binary format), ``item_ids.npy`` (read with ``allow_pickle=False``), ``index.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

EXACT_UP_TO = 50_000  # items scanned exactly below this size
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 200
EF_SEARCH = (32, 64, 128, 256, 512, 1024)
K = 100


@dataclass
class IndexInfo:
    kind: str  # flat | hnsw
    n_items: int
    dim: int
    params: dict[str, int]
    recall_at_100: float  # against exact search, on the sample queries
    queries: int


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact top-k that the index also returned."""
    hits = [len(np.intersect1d(f[f >= 0], e)) for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits) / exact.shape[1])


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    return flat.search(queries, k)[1]


def build_index(vectors: np.ndarray, queries: np.ndarray, target_recall: float = 0.95,
                kind: str = "auto") -> tuple[faiss.Index, IndexInfo]:
    """An index over ``vectors`` (n, d) float32; ``queries`` (m, d) measure its recall@100 against exact."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n, dim = vectors.shape
    k = min(K, n)
    kind = ("flat" if n <= EXACT_UP_TO else "hnsw") if kind == "auto" else kind
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index, IndexInfo("flat", n, dim, {}, 1.0, len(queries))
    if kind != "hnsw":
        raise ValueError(f"index kind must be auto, flat or hnsw, got {kind!r}")
    exact = exact_top_k(vectors, queries, k)
    index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(vectors)
    for ef in EF_SEARCH:
        index.hnsw.efSearch = ef
        recall = recall_at_k(index.search(queries, k)[1], exact)
        if recall >= target_recall:
            break
    params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": index.hnsw.efSearch}
    return index, IndexInfo("hnsw", n, dim, params, recall, len(queries))


def queries_per_second(index: faiss.Index, queries: np.ndarray, k: int = K) -> float:
    start = time.perf_counter()
    index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return len(queries) / (time.perf_counter() - start)


def save_index(folder: str | Path, index: faiss.Index, item_ids: np.ndarray, info: IndexInfo) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(folder / "index.faiss"))
    np.save(folder / "item_ids.npy", np.asarray(item_ids, dtype=np.int64))
    (folder / "index.json").write_text(json.dumps(asdict(info), indent=2))


def load_index(folder: str | Path) -> tuple[faiss.Index, np.ndarray, IndexInfo]:
    folder = Path(folder)
    info = IndexInfo(**json.loads((folder / "index.json").read_text()))
    index = faiss.read_index(str(folder / "index.faiss"))
    if info.kind == "hnsw":
        index.hnsw.efSearch = info.params["efSearch"]
    return index, np.load(folder / "item_ids.npy", allow_pickle=False), info
