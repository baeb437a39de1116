"""The approximate-nearest-neighbour index over item embeddings (FAISS, inner product).

The index type follows the catalogue size: exact search (``IndexFlatIP``) while it is small enough to
scan, an HNSW graph for mid-sized catalogues, and an inverted file (IVF, k-means cells) for large ones,
whose graph would take too long to build. The search breadth (HNSW ``efSearch``, IVF ``nprobe``) is set
to the smallest value that reaches the target recall@100 against exact search on sample queries.
Row i of the index is item ``item_ids[i]``. Files: ``index.faiss`` (FAISS's own
binary format), ``item_ids.npy`` (read with ``allow_pickle=False``), ``index.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

EXACT_UP_TO = 50_000  # items scanned exactly up to this size
HNSW_UP_TO = 300_000  # HNSW up to this size, IVF beyond
HNSW_M, HNSW_EF_CONSTRUCTION = 32, 200
EF_SEARCH = (32, 64, 128, 256, 512, 1024)
NPROBE = (8, 16, 32, 64, 128, 256, 512, 1024)
IVF_TRAIN = 200_000  # vectors sampled to train the IVF cells
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
    if kind == "auto":
        kind = "flat" if n <= EXACT_UP_TO else "hnsw" if n <= HNSW_UP_TO else "ivf"
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index, IndexInfo("flat", n, dim, {}, 1.0, len(queries))
    exact = exact_top_k(vectors, queries, k)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(vectors)
        params = {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}
        breadth, values = "efSearch", EF_SEARCH
    elif kind == "ivf":
        nlist = int(2 ** round(np.log2(4 * np.sqrt(n))))  # about 4 sqrt(n) cells
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(n, min(n, max(IVF_TRAIN, 40 * nlist)), replace=False)
        index.train(vectors[np.sort(sample)])
        index.add(vectors)
        params = {"nlist": nlist}
        breadth, values = "nprobe", NPROBE
    else:
        raise ValueError(f"index kind must be auto, flat, hnsw or ivf, got {kind!r}")
    for value in values:
        set_breadth(index, kind, value)
        recall = recall_at_k(index.search(queries, k)[1], exact)
        if recall >= target_recall:
            break
    return index, IndexInfo(kind, n, dim, {**params, breadth: value}, recall, len(queries))


def set_breadth(index: faiss.Index, kind: str, value: int) -> None:
    """How widely a search looks: HNSW's efSearch or IVF's nprobe."""
    if kind == "hnsw":
        index.hnsw.efSearch = value
    elif kind == "ivf":
        faiss.extract_index_ivf(index).nprobe = value


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
    if info.kind != "flat":
        set_breadth(index, info.kind, info.params["efSearch" if info.kind == "hnsw" else "nprobe"])
    return index, np.load(folder / "item_ids.npy", allow_pickle=False), info
