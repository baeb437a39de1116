"""Ranking as serving does it, without Triton: the exported ranker's ONNX graph in ONNX Runtime (the export checks
it against the PyTorch model within 1e-5, and Triton serves the same file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys.errors import RecsysError
from recsys.export.signature import ModelSignature


class OnnxRanker:
    """Click scores for one user's candidates from an exported ranker's ``model.onnx``."""

    def __init__(self, folder: str | Path, schema_hash: str, threads: int = 1):
        import onnxruntime as ort

        folder = Path(folder)
        self.signature = ModelSignature.read(folder)
        if self.signature.schema_hash != schema_hash:
            raise RecsysError(f"{folder} was exported for feature schema {self.signature.schema_hash}, "
                              f"this dataset uses {schema_hash}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def scores(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """(n,) scores for n candidates' encoded inputs (one row each)."""
        names = [s.name for s in self.signature.inputs]
        return self.session.run(None, {name: inputs[name] for name in names})[0].reshape(-1)
