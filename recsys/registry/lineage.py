"""What a registered model version records about itself: lineage read from an export folder, as tags.

Everything comes from files the pipeline already writes: ``<export>/export.json`` (``recsys export``), the
training run's ``metrics.json`` and the checkpoint's ``recsys.json``. Tag values are strings; structured
values (config, metrics, baselines, parity) are JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError
from recsys.ids import EXPORT_ID_MAPS

# version tags, in the order `recsys models show` prints them
LINEAGE_KEYS = ("task", "dataset_id", "dataset_path", "schema_hash", "code_version", "training_run",
                "training_run_path", "wandb_run", "checkpoint", "export_dir", "exported_at", "metrics", "baselines",
                "parity", "parity_tolerance", "parity_passed", "id_kinds", "id_maps", "training_config")
JSON_KEYS = ("metrics", "baselines", "parity", "id_kinds", "training_config")
ARTIFACT_PREFIX = "artifact."  # artifact.<model> = its exported folder (model.onnx, model.json)
ITEM_INDEX = "item_index"  # two-tower: items/ (embeddings, ANN index)
TRITON_REPOSITORY = "triton_repository."  # triton_repository.<model> = the Triton model repository
TRITON_VERSION = "triton_version."  # triton_version.<model> = the version folder's number


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise RecsysError(f"{path} is missing: {what}")
    return json.loads(path.read_text())


def offline_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The offline metrics of a run: validation (``val/*``, the kept epoch's: what registration's floor compares)
    and test (``test/*``: AUC, GAUC, log-loss, NDCG, or recall@K and NDCG@K)."""
    return {k: float(v) for k, v in metrics.items() if k.startswith(("val/", "test/"))}


def export_lineage(export_dir: str | Path, triton_versions: Mapping[str, str | Path] | None = None) -> dict[str, str]:
    """The version tags for the export in ``export_dir``.

    Args:
        export_dir: a folder written by ``recsys export`` (with ``export.json``).
        triton_versions: exported model name -> the Triton version folder ``<repo>/<name>/<n>`` it was added as.
    """
    export_dir = Path(export_dir).resolve()
    export = _read_json(export_dir / "export.json", "not an export folder (run `recsys export` first)")
    lineage = export["lineage"]
    checkpoint = Path(export["checkpoint"])
    run_dir = checkpoint.parents[1]
    meta = _read_json(checkpoint / "recsys.json", "the training checkpoint the export was made from")
    run_summary = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else {}
    # the run's summary when it is there, else what the export copied from it
    metrics = run_summary.get("metrics") or json.loads(lineage.get("metrics") or "{}")
    baselines = run_summary.get("baselines") or json.loads(lineage.get("baselines") or "{}")
    parity = {k: float(v) for k, v in export["parity_max_abs_diff"].items()}
    tolerance = float(export["tolerance"])
    tags = {
        "task": lineage["task"], "dataset_id": lineage["dataset_id"], "dataset_path": meta.get("dataset_path", ""),
        "schema_hash": lineage["schema_hash"], "code_version": lineage.get("code_version", "unknown"),
        "training_run": lineage["training_run"], "training_run_path": str(run_dir),
        "wandb_run": run_summary.get("wandb_run", ""), "checkpoint": str(checkpoint), "export_dir": str(export_dir),
        "exported_at": lineage.get("exported_at", ""), "metrics": json.dumps(offline_metrics(metrics)),
        "baselines": json.dumps(baselines), "parity": json.dumps(parity), "parity_tolerance": repr(tolerance),
        "parity_passed": str(bool(parity) and all(d <= tolerance for d in parity.values())).lower(),
        "training_config": json.dumps(meta.get("config", {}), sort_keys=True),
    }
    for name, folder in export["models"].items():
        tags[ARTIFACT_PREFIX + name] = str(Path(folder).resolve())
    if export.get("index"):
        tags[ITEM_INDEX] = str(export_dir / "items")
    if "ids" in export:  # (exports made before the id maps travelled with them have neither)
        tags["id_kinds"] = json.dumps(export["ids"], sort_keys=True)
        tags["id_maps"] = str(export_dir / EXPORT_ID_MAPS)  # a text id's map: ids_<column>.parquet
    for name, folder in (triton_versions or {}).items():
        folder = Path(folder).resolve()
        tags[TRITON_REPOSITORY + name] = str(folder.parents[1])
        tags[TRITON_VERSION + name] = folder.name
    return tags


def parsed(tags: Mapping[str, str], key: str) -> Any:
    """A JSON tag's value ({} when absent)."""
    value = tags.get(key)
    return json.loads(value) if value else {}
