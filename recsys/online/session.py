"""An exported model's ONNX graph opened for scoring: its signature checked against the schema in use, and an
ONNX Runtime session on the CPU with a fixed number of threads."""

from __future__ import annotations

from pathlib import Path

from recsys.errors import RecsysError
from recsys.export.signature import ModelSignature


def open_exported(folder: str | Path, schema_hash: str, threads: int = 1):
    """``(signature, session)`` of ``folder/model.onnx``; refuses a model exported for another feature schema."""
    import onnxruntime as ort

    folder = Path(folder)
    signature = ModelSignature.read(folder)
    if signature.schema_hash != schema_hash:
        raise RecsysError(f"{folder} was exported for feature schema {signature.schema_hash}, "
                          f"the features in use are of schema {schema_hash}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return signature, ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
