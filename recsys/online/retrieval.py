"""Retrieval as serving does it, without Ray: the query tower (ONNX Runtime) and the item ANN index (FAISS) of a
retrieval export."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys.errors import RecsysError
from recsys.export.signature import ModelSignature


class QueryRetriever:
    """Query tower + ANN index, without Ray (the deployment below wraps it)."""

    def __init__(self, export: str | Path, schema_hash: str, threads: int = 1):
        import onnxruntime as ort

        from recsys.export.ann import load_index

        export = Path(export)
        tower = export / "query_tower"
        self.signature = ModelSignature.read(tower)
        if self.signature.schema_hash != schema_hash:
            raise RecsysError(f"{tower} was exported for feature schema {self.signature.schema_hash}, "
                              f"serving uses {schema_hash}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(tower / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.index, self.item_ids, self.info = load_index(export / "items")
        self.version = self.signature.metadata.get("training_run", str(export))

    def search(self, inputs: list[dict[str, np.ndarray]], n: int) -> list[list[int]]:
        """Top-``n`` item ids for each user's query-tower inputs (one row each), best first."""
        names = [s.name for s in self.signature.inputs]
        batch = {name: np.concatenate([x[name] for x in inputs]) for name in names}
        queries = np.ascontiguousarray(self.session.run(None, batch)[0], dtype=np.float32)  # (B, D)
        _, rows = self.index.search(queries, min(n, len(self.item_ids)))  # (B, n)
        return [[int(self.item_ids[r]) for r in row if r >= 0] for row in rows]
