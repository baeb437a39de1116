"""Ranking as serving does it, without Triton: the exported ranker's ONNX graph in ONNX Runtime (the export checks
it against the PyTorch model within 1e-5, and Triton serves the same file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recsys.online.session import open_exported


class OnnxRanker:
    """Click scores for one user's candidates from an exported ranker's ``model.onnx``."""

    def __init__(self, folder: str | Path, schema_hash: str, threads: int = 1):
        self.signature, self.session = open_exported(folder, schema_hash, threads)

    def scores(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """(n,) scores for n candidates' encoded inputs (one row each)."""
        names = [s.name for s in self.signature.inputs]
        return self.session.run(None, {name: inputs[name] for name in names})[0].reshape(-1)
