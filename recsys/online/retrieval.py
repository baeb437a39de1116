"""Retrieval as serving does it, without Ray: the query tower (ONNX Runtime) and the item ANN index (FAISS) of a
retrieval export."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys.online.session import open_exported


class QueryRetriever:
    """Query tower + ANN index, without Ray (`serving.retriever.Retrieval` batches it in the app's ingress)."""

    def __init__(self, export: str | Path, schema_hash: str, threads: int = 1):
        from recsys.export.ann import load_index

        export = Path(export)
        self.signature, self.session = open_exported(export / "query_tower", schema_hash, threads)
        self.index, self.item_ids, self.info = load_index(export / "items")
        self.version = self.signature.metadata.get("training_run", str(export))

    def search(self, inputs: list[dict[str, np.ndarray]], n: int) -> list[list[int]]:
        """Top-``n`` item ids for each user's query-tower inputs (one row each), best first."""
        _, rows = self._search(inputs, n)
        return [self.item_ids[row[row >= 0]].tolist() for row in rows]

    def search_scored(self, inputs: list[dict[str, np.ndarray]], n: int) -> list[dict[int, float]]:
        """Top-``n`` items for each user's query-tower inputs, best first: item id -> the index's score (the
        inner product of the query and item embeddings, or its approximation by the index)."""
        scores, rows = self._search(inputs, n)
        return [dict(zip(self.item_ids[row[row >= 0]].tolist(), scored[row >= 0].tolist(), strict=True))
                for row, scored in zip(rows, scores, strict=True)]

    def _search(self, inputs: list[dict[str, np.ndarray]], n: int) -> tuple[np.ndarray, np.ndarray]:
        """The index's (scores, rows) of each user's top ``n``, shape (users, n); a row is -1 past the end."""
        names = [s.name for s in self.signature.inputs]
        batch = {name: np.concatenate([x[name] for x in inputs]) for name in names}
        queries = np.ascontiguousarray(self.session.run(None, batch)[0], dtype=np.float32)  # (B, D)
        return self.index.search(queries, min(n, len(self.item_ids)))
