"""A tiny exported ranker for the deployment tests: what the exporter writes, made with torch.onnx.export.

Inputs as the real exports have them: an int64 id ``(1,)`` gathered from an embedding, an int64 padded history
``(20,)`` (0 = padding) averaged under its mask, a float32 dense ``(3,)``; one float32 probability ``(1,)``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from recsys.export.signature import ModelSignature, TensorSpec

HISTORY = 20
N_ITEMS = 50


class TinyRanker(nn.Module):
    def __init__(self, seed: int, dim: int = 8) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.items = nn.Embedding(N_ITEMS, dim, padding_idx=0)
        self.dense = nn.Linear(3, dim)
        self.out = nn.Linear(2 * dim, 1)

    def forward(self, item_id: torch.Tensor, history: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        item = self.items(item_id[:, 0])  # (B, D)
        mask = (history > 0).unsqueeze(-1).float()  # (B, H, 1)
        hist = (self.items(history) * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, D)
        x = torch.cat([item * hist, self.dense(dense)], dim=1)  # (B, 2D)
        return torch.sigmoid(self.out(x))  # (B, 1)


def signature(name: str, schema_hash: str) -> ModelSignature:
    return ModelSignature(
        name=name,
        inputs=(TensorSpec("item_id", "int64", (1,)), TensorSpec("history", "int64", (HISTORY,)),
                TensorSpec("dense", "float32", (3,))),
        outputs=(TensorSpec("probability", "float32", (1,)),),
        metadata={"schema_hash": schema_hash, "dataset_id": "ds-test", "training_run": "run-test", "task": "ranking"},
    )


def export_tiny_ranker(folder: str | Path, name: str = "ranker", schema_hash: str = "abc123",
                       seed: int = 0, onnx_schema_hash: str | None = None) -> Path:
    """Write ``model.onnx`` + ``model.json`` into ``folder``; ``onnx_schema_hash`` makes the two disagree."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sig = signature(name, schema_hash)
    model = TinyRanker(seed).eval()
    example = tuple(torch.from_numpy(a) for a in batch(2).values())
    path = folder / "model.onnx"
    names = [s.name for s in sig.inputs]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, as the real export uses
        torch.onnx.export(model, example, str(path), input_names=names, output_names=["probability"],
                          dynamic_axes={n: {0: "batch"} for n in [*names, "probability"]}, dynamo=False)
    proto = onnx.load(str(path))
    meta = {**sig.metadata, "schema_hash": onnx_schema_hash or schema_hash}
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))
    sig.write(folder)
    return folder


def set_onnx_schema_hash(path: str | Path, schema_hash: str) -> None:
    """Rewrite the schema hash in an ONNX file's metadata (what a hand-copied foreign model looks like)."""
    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == "schema_hash":
            prop.value = schema_hash
    onnx.save(proto, str(path))


def batch(n: int, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    history = rng.integers(1, N_ITEMS, size=(n, HISTORY))
    history[:, rng.integers(0, HISTORY):] = 0  # padded tail
    return {"item_id": rng.integers(1, N_ITEMS, size=(n, 1)).astype(np.int64),
            "history": history.astype(np.int64),
            "dense": rng.normal(size=(n, 3)).astype(np.float32)}


def torch_scores(inputs: dict[str, np.ndarray], seed: int = 0) -> np.ndarray:
    """What the torch model behind ``export_tiny_ranker(seed=seed)`` answers: (B, 1) probabilities."""
    with torch.no_grad():
        return TinyRanker(seed).eval()(*(torch.from_numpy(inputs[k]) for k in ("item_id", "history", "dense"))).numpy()
