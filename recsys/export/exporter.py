"""Export a trained run: ONNX graphs for the DLRM ranker and the query (user) tower, the item embedding
matrix with its ANN index, each with a signature and lineage, and parity checked on every export.

Parity: ONNX Runtime against the trained TorchRec model on real validation rows (max abs difference
of probabilities / embeddings within ``tolerance``); a failure stops the export with both figures.
The item matrix is computed by the exported (gather) item tower, checked the same way against
TorchRec's. Output layout (``out``)::

    dlrm/model.onnx, dlrm/model.json                 the ranker (probability of a click)
    query_tower/model.onnx, query_tower/model.json   user -> embedding
    items/embeddings.npy, items/index.faiss, items/item_ids.npy, items/index.json
    ids/ids_<column>.parquet                         a text user / item id's map (`recsys.ids`): what the
                                                     models' codes are in the shop's own ids
    export.json                                      what was exported, parity, index recall, id kinds

The id kinds (``integer`` or ``text``) are in each ONNX file's metadata too (``id_kinds``): a graph taken out of
the folder still says how the ids it is fed were coded.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import polars as pl
import torch

from recsys import framework_notes
from recsys.data.dataset import Dataset
from recsys.data.features import META_ITEM
from recsys.errors import RecsysError
from recsys.export import ann
from recsys.export.serving import ServingRanker, ServingTower, input_specs
from recsys.export.signature import ModelSignature, TensorSpec, serving_inputs
from recsys.ids import EXPORT_ID_MAPS, MAPPED_IDS, IdMap
from recsys.models.inputs import InputSpec, make_batch
from recsys.training.checkpoint import load_model

framework_notes.quiet()

OPSET = 17
PARITY_ROWS = 2048


@dataclass
class ExportResult:
    out: Path
    models: dict[str, Path] = field(default_factory=dict)  # Triton model name -> exported folder
    parity: dict[str, float] = field(default_factory=dict)  # model -> max abs difference
    index: dict[str, Any] = field(default_factory=dict)


def export_onnx(module: torch.nn.Module, signature: ModelSignature, example: dict[str, np.ndarray],
                folder: Path) -> Path:
    """``module`` to ``folder/model.onnx`` with a dynamic batch axis, the signature's names and lineage."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    names = [s.name for s in signature.inputs]
    outputs = [s.name for s in signature.outputs]
    args = tuple(torch.from_numpy(example[n]) for n in names)
    with torch.no_grad(), warnings.catch_warnings():
        # the legacy exporter's notes on deprecation and on aten::index (ids are never negative here)
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        torch.onnx.export(module.eval(), args, str(path), input_names=names, output_names=outputs,
                          dynamic_axes={n: {0: "batch"} for n in [*names, *outputs]}, opset_version=OPSET,
                          dynamo=False)
    stamp(path, signature)
    return path


def stamp(path: Path, signature: ModelSignature) -> None:
    """The signature's metadata into the ONNX file, and the signature beside it."""
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, signature.metadata)
    onnx.save(graph, str(path))
    signature.write(path.parent)


def run_onnx(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


def check_parity(name: str, expected: np.ndarray, got: np.ndarray, tolerance: float) -> float:
    if expected.shape != got.shape:
        raise RecsysError(f"export parity failed for {name}: ONNX Runtime returned shape {got.shape}, "
                          f"the trained model {expected.shape}")
    diff = float(np.abs(expected.astype(np.float64) - got).max()) if expected.size else 0.0
    if not diff <= tolerance:
        raise RecsysError(f"export parity failed for {name}: max abs difference {diff:.3g} between ONNX Runtime "
                          f"and the trained model exceeds {tolerance:g}")
    return diff


def _lineage(meta: dict[str, Any], run_metrics: dict[str, Any]) -> dict[str, str]:
    return {"schema_hash": meta["schema_hash"], "dataset_id": meta["dataset_id"], "training_run": meta["run"],
            "task": meta["task"], "code_version": meta.get("code_version", "unknown"),
            "metrics": json.dumps(run_metrics.get("metrics", {})),
            "baselines": json.dumps(run_metrics.get("baselines", {})),
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _tower_vectors(tower, spec: InputSpec, rows: pl.DataFrame, batch: int = 8192) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([tower(make_batch(rows.slice(i, batch), spec)) for i in range(0, rows.height, batch)]).numpy()


def export_checkpoint(checkpoint: str | Path, out: str | Path, tolerance: float = 1e-5,
                      parity_rows: int = PARITY_ROWS) -> ExportResult:
    """Export the model in ``checkpoint`` (a training run's checkpoint folder) to ``out``."""
    model, meta = load_model(checkpoint)
    dataset = Dataset.open(meta["dataset_path"])
    metrics_file = Path(checkpoint).parents[1] / "metrics.json"
    run_metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    out = Path(out)
    result = ExportResult(out)
    id_kinds = _export_id_maps(dataset, out / EXPORT_ID_MAPS)
    lineage = {**_lineage(meta, run_metrics), "id_kinds": json.dumps(id_kinds)}
    if meta["task"] == "dlrm":
        rows = pl.read_parquet(dataset.shards("ranking", "val")[0]).head(parity_rows)
        specs = input_specs(model.spec)
        signature = ModelSignature("dlrm", specs, (TensorSpec("p_click", "float32", (1,)),), dict(lineage))
        with torch.no_grad():
            expected = torch.sigmoid(model(make_batch(rows, model.spec))).numpy()[:, None]
        result.models["dlrm"] = _export_checked(ServingRanker(model), signature, rows, expected, out / "dlrm",
                                                tolerance, result)
    else:
        rows = pl.read_parquet(dataset.shards("retrieval", "val")[0]).head(parity_rows)
        specs = input_specs(model.user_spec)
        dim = model.user_tower.mlp[-1].out_features
        signature = ModelSignature("query_tower", specs, (TensorSpec("embedding", "float32", (dim,)),),
                                   dict(lineage))
        expected = _tower_vectors(model.user_tower, model.user_spec, rows)
        result.models["query_tower"] = _export_checked(ServingTower(model.user_tower, model.user_spec), signature,
                                                       rows, expected, out / "query_tower", tolerance, result)
        result.index = _export_items(model, dataset, out / "items", tolerance, result)
    (out / "export.json").write_text(json.dumps({
        "checkpoint": str(checkpoint), "lineage": lineage, "models": {k: str(v) for k, v in result.models.items()},
        "parity_max_abs_diff": result.parity, "tolerance": tolerance, "index": result.index,
        "ids": id_kinds}, indent=2))
    return result


def _export_id_maps(dataset: Dataset, folder: Path) -> dict[str, str]:
    """Each mapped id's kind, with the dataset's maps of its text ids copied to ``folder``: the export decodes
    what its models answer without the dataset it was trained on."""
    kinds = dataset.manifest.online.get("ids", {})
    folder.mkdir(parents=True, exist_ok=True)
    for column in MAPPED_IDS:
        if (source := IdMap.path(dataset.path / "online", column)).is_file():
            shutil.copy2(source, IdMap.path(folder, column))
    return {column: kinds.get(column, "integer") for column in MAPPED_IDS}


def _export_checked(module: torch.nn.Module, signature: ModelSignature, rows: pl.DataFrame, expected: np.ndarray,
                    folder: Path, tolerance: float, result: ExportResult) -> Path:
    inputs = serving_inputs(rows, signature.inputs)
    with torch.no_grad():
        served = module.eval()(*[torch.from_numpy(inputs[s.name]) for s in signature.inputs]).numpy()
    check_parity(f"{signature.name} (gather module)", expected, served, tolerance)
    path = export_onnx(module, signature, inputs, folder)
    diff = check_parity(signature.name, expected, run_onnx(path, inputs), tolerance)
    result.parity[signature.name] = diff
    metadata = {**signature.metadata, "parity_max_abs_diff": f"{diff:.3g}", "parity_rows": str(len(rows))}
    stamp(path, ModelSignature(signature.name, signature.inputs, signature.outputs, metadata))
    return folder


def _export_items(model, dataset: Dataset, folder: Path, tolerance: float, result: ExportResult) -> dict[str, Any]:
    """Every item's embedding (the online items table), checked against TorchRec, and its ANN index."""
    items = dataset.online("items").sort(META_ITEM)
    expected = _tower_vectors(model.item_tower, model.item_spec, items)
    tower = ServingTower(model.item_tower, model.item_spec).eval()
    inputs = serving_inputs(items, input_specs(model.item_spec))
    with torch.no_grad():
        vectors = tower(*[torch.from_numpy(inputs[f.name]) for f in input_specs(model.item_spec)]).numpy()
    result.parity["item_embeddings"] = check_parity("item embeddings", expected, vectors, tolerance)
    users = dataset.online("users")
    sample = users.sample(min(1000, users.height), seed=0) if users.height else users
    queries = _tower_vectors(model.user_tower, model.user_spec, sample)
    index, info = ann.build_index(vectors, queries)
    ann.save_index(folder, index, items[META_ITEM].to_numpy(), info)
    np.save(folder / "embeddings.npy", vectors.astype(np.float32))
    return asdict(info)
