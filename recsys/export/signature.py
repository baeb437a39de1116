"""What an exported model takes and returns: its tensors' names, dtypes and shapes, derived from the
feature schema, plus the lineage it carries. Written beside every exported model as ``model.json``
(and into the ONNX file's metadata), read by the Triton repository builder and by serving.

Shapes exclude the batch axis (always first and dynamic): a single id is ``(1,)``, a padded history of
20 ids ``(20,)``, a 64-dim embedding ``(64,)``. Ids are int64, dense features and outputs float32.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys.errors import RecsysError

if TYPE_CHECKING:
    from collections.abc import Iterable

    import polars as pl

    from recsys.schema import Feature

DTYPES = ("int64", "float32")
SIGNATURE_FILE = "model.json"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # int64 | float32
    shape: tuple[int, ...]  # without the batch axis

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise RecsysError(f"tensor {self.name!r}: dtype {self.dtype!r} is not one of {DTYPES}")

    @property
    def numpy_dtype(self) -> type:
        return np.int64 if self.dtype == "int64" else np.float32


def tensor_specs(features: Iterable[Feature]) -> tuple[TensorSpec, ...]:
    """Serving inputs of schema features: sparse ones (int64, ``(length,)``) then dense ones (float32,
    ``(1,)``), each group in the given order."""
    features = tuple(features)
    return (*(TensorSpec(f.name, "int64", (f.length,)) for f in features if f.is_sparse),
            *(TensorSpec(f.name, "float32", (1,)) for f in features if not f.is_sparse))


def serving_inputs(rows: pl.DataFrame, specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    """Arrays for ``specs`` from encoded rows (a dataset shard or an online table)."""
    return {s.name: rows[s.name].to_numpy().astype(s.numpy_dtype).reshape(len(rows), *s.shape) for s in specs}


@dataclass(frozen=True)
class ModelSignature:
    """An exported model's interface and lineage.

    ``metadata`` holds strings only (it also goes into the ONNX metadata): schema_hash, dataset_id,
    training_run, task, and the evaluation metrics and parity results as JSON strings.
    """

    name: str  # the Triton model name, e.g. "dlrm" or "query_tower"
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def schema_hash(self) -> str:
        return self.metadata["schema_hash"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSignature:
        def specs(key: str) -> tuple[TensorSpec, ...]:
            return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in data[key])

        return cls(name=data["name"], inputs=specs("inputs"), outputs=specs("outputs"),
                   metadata={str(k): str(v) for k, v in data.get("metadata", {}).items()})

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / SIGNATURE_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def read(cls, folder: str | Path) -> ModelSignature:
        path = Path(folder) / SIGNATURE_FILE
        if not path.is_file():
            raise RecsysError(f"{folder} holds no exported model signature ({SIGNATURE_FILE})")
        return cls.from_dict(json.loads(path.read_text()))
