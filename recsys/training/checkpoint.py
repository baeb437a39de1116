"""Training checkpoints: sharded, resumable, and enough to rebuild the trained model on its own.

A checkpoint is a directory (one per epoch; Ray Train merges every worker's files into it)::

    .metadata, __<rank>_0.distcp   tensors in torch.distributed.checkpoint (DCP) format, each worker's own
                                   shards: model weights, dense and embedding optimiser state
    trainer_state.pt               Lightning's non-tensor state (epoch, loop counters), plain containers
    recsys.json                    what the model is: task, config, schema hash, dataset id, table sizes, and
                                   the ranker's calibration (``calibration``, written once training has ended)

Nothing in it is unpickled: DCP reads tensors with ``weights_only=True`` and only tensors go to DCP (its
loader unpickles anything else), and ``trainer_state.pt`` is read with ``weights_only=True``.
A DCP checkpoint is not tied to the sharding that wrote it: `load_model` reads it into a plain,
unsharded model in one process, and a resumed run may use another plan.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp

from recsys.errors import RecsysError
from recsys.training.calibration import CALIBRATION_KEY, Calibration

META = "recsys.json"
TRAINER_STATE = "trainer_state.pt"
MODEL_PREFIX = "train_wrapper.model."  # where the model sits in the LightningModule's state dict
# Lightning's checkpoint entries that hold tensors; they go to DCP, the rest to trainer_state.pt
TENSOR_ENTRIES = ("state_dict", "optimizer_states")


def _tensors(tree: Any) -> Any:
    """``tree`` (nested dicts) with only its tensor leaves (sharded ones included); None if it has none."""
    if isinstance(tree, Mapping):
        kept = {str(k): t for k, v in tree.items() if (t := _tensors(v)) is not None}
        return kept or None
    return tree if isinstance(tree, torch.Tensor) else None


def _merge(tree: Any, loaded: Any) -> Any:
    """``tree`` with its tensor leaves replaced by those of ``loaded`` (same keys, as strings)."""
    if isinstance(tree, Mapping):
        return {k: _merge(v, loaded.get(str(k))) if loaded is not None else v for k, v in tree.items()}
    return loaded if isinstance(tree, torch.Tensor) and loaded is not None else tree


def _optimizer_states(optimizers: list, fused) -> dict[str, Any]:
    states = {f"dense_{i}": opt.state_dict()["state"] for i, opt in enumerate(optimizers)}
    states["embedding"] = fused.state_dict()["state"]
    return states


def save(checkpoint: dict[str, Any], path: str | Path, optimizers: list, fused, is_global_zero: bool) -> None:
    """Write a Lightning checkpoint (called on every rank, each with its own shards)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {"model": _tensors(checkpoint["state_dict"]),
               "optimizers": _tensors(_optimizer_states(optimizers, fused)) or {}}
    dcp.save(tensors, checkpoint_id=path)
    if is_global_zero:
        rest = {k: v for k, v in checkpoint.items() if k not in TENSOR_ENTRIES and k != "recsys"}
        torch.save(rest, path / TRAINER_STATE)
        (path / META).write_text(json.dumps(checkpoint.get("recsys", {}), indent=2))


def load_in_place(path: str | Path, module: torch.nn.Module, optimizers: list, fused) -> dict[str, Any]:
    """Load a checkpoint into a sharded LightningModule and its optimisers (every rank, collectively).

    Optimiser state is created lazily; it is initialised first so there is something to load into
    (otherwise Adam's moments would be skipped without an error). Returns Lightning's checkpoint dict.
    """
    path = _checkpoint_dir(path)
    for opt in [*optimizers, fused]:
        if not opt.state:
            opt.init_state()
    model_sd = module.state_dict()
    states = _optimizer_states(optimizers, fused)
    tensors = {"model": _tensors(model_sd), "optimizers": _tensors(states) or {}}
    dcp.load(tensors, checkpoint_id=path)
    model_sd = _merge(model_sd, tensors["model"])
    dmp = module.train_wrapper.model
    dmp.load_state_dict({k[len(MODEL_PREFIX):]: v for k, v in model_sd.items() if k.startswith(MODEL_PREFIX)})
    for i, opt in enumerate(optimizers):
        sd = opt.state_dict()
        opt.load_state_dict({**sd, "state": _merge(sd["state"], tensors["optimizers"].get(f"dense_{i}"))})
    sd = fused.state_dict()
    fused.load_state_dict({**sd, "state": _merge(sd["state"], tensors["optimizers"].get("embedding"))})
    checkpoint = torch.load(path / TRAINER_STATE, weights_only=True)
    checkpoint.update(state_dict=model_sd, optimizer_states=[])
    return checkpoint


def _checkpoint_dir(path: str | Path) -> Path:
    path = Path(path)
    if not (path / ".metadata").is_file() or not (path / META).is_file():
        raise RecsysError(f"{path} is not a training checkpoint: expected .metadata and {META} in it")
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The checkpoint's description: task, config, schema hash, dataset id, table sizes, code version."""
    return json.loads((_checkpoint_dir(path) / META).read_text())


def load_model(path: str | Path, calibrated: bool = True):
    """The trained model (unsharded, CPU, eval mode) and its description, from a checkpoint alone; a ranker with
    its calibration applied, if it has one and ``calibrated``.

    Refuses a checkpoint written under another feature schema than the one configured now.
    """
    from recsys.config import from_dict
    from recsys.models.dlrm import Ranker
    from recsys.models.two_tower import TwoTower
    from recsys.schema import load_schema
    from recsys.training.config import TrainConfig

    meta = read_meta(path)
    schema = load_schema()
    if meta["schema_hash"] != schema.hash:
        raise RecsysError(f"checkpoint {path} was trained with feature schema {meta['schema_hash']}, but the "
                          f"schema is now {schema.hash}; rebuild with the schema it was trained on")
    cfg = from_dict(TrainConfig, meta["config"])
    if meta["task"] == "dlrm":
        model = Ranker(schema, meta["cardinalities"], cfg.dlrm)
    else:
        model = TwoTower(schema, meta["cardinalities"], cfg.two_tower)
    weights = {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}
    with warnings.catch_warnings():  # (DCP's note that it loads in one process, which no_dist asks for)
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        dcp.load({"model": weights}, checkpoint_id=Path(path), no_dist=True)
    model.load_state_dict({k[len(MODEL_PREFIX):]: v for k, v in weights.items()})
    if calibrated and CALIBRATION_KEY in meta:  # the ranker's Platt scaling, fitted once training ended
        model.calibrate(meta[CALIBRATION_KEY]["scale"], meta[CALIBRATION_KEY]["shift"])
    return model.eval(), meta


def record_calibration(path: str | Path, calibration: Calibration) -> None:
    """Save the ranker's calibration in the checkpoint's description, in place of any earlier one (`load_model`
    applies it). The tensors stay as trained: a run resumed from it trains on, and is calibrated when it ends."""
    meta = read_meta(path)
    meta[CALIBRATION_KEY] = asdict(calibration)
    (_checkpoint_dir(path) / META).write_text(json.dumps(meta, indent=2))
