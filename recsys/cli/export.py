"""``recsys export``: a trained run to ONNX graphs (and the item index), parity-checked."""

from __future__ import annotations

import argparse
from pathlib import Path

from recsys.errors import RecsysError


def final_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint, else the final checkpoint of the run folder ``path``."""
    import json

    path = Path(path)
    if (path / "recsys.json").is_file():
        return path
    summary = path / "metrics.json"
    if summary.is_file():
        return Path(json.loads(summary.read_text())["checkpoint"])
    raise RecsysError(f"{path} is neither a training checkpoint (with recsys.json) nor a finished run folder "
                      "(with metrics.json)")


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "export", help="export a trained run to ONNX (and the two-tower's item index)",
        description="Convert a trained model (a run folder or one of its checkpoints) to plain gather-based modules, "
                    "export them to ONNX with a dynamic batch axis, check ONNX Runtime against the trained model on "
                    "validation rows, and for the two-tower also write every item's embedding and an ANN index.")
    p.add_argument("runs", nargs="+", metavar="run",
                   help="run folder (runs/train/<run>) or checkpoint folder (…/checkpoint.ckpt); several: each in turn")
    p.add_argument("--out", help="output folder (default: <run folder>/export; one run only)")
    p.add_argument("--tolerance", type=float, default=1e-5,
                   help="largest max-abs difference ONNX Runtime vs the trained model that passes (default 1e-5)")
    p.add_argument("--repository", help="also add the exported models as new versions to this Triton model "
                   "repository (e.g. triton_models), refusing any exported for another feature schema")
    p.add_argument("--no-register", dest="register", action="store_false",
                   help="do not register the export as a new model version (by default it is: see `recsys models`)")
    p.add_argument("--registry", metavar="URI", help="MLflow store to register in (default: MLFLOW_TRACKING_URI, "
                   "else sqlite:///<project>/runs/registry/mlflow.db)")
    p.add_argument("--allow-below-floor", metavar="REASON",
                   help="register (and add to the repository) a model that does not beat popularity and logistic "
                   "regression on validation, for this reason (recorded); without it such a model is exported but "
                   "neither added nor registered")
    p.set_defaults(func=cmd_export)


def publish(run: str | Path, out: str | Path | None = None, repository: str | Path | None = None,
            register: bool = True, registry: str | None = None, tolerance: float = 1e-5,
            allow_below_floor: str | None = None):
    """Export a run (ONNX, parity-checked), add its models to a Triton repository and register it.

    Returns (export result, {model: Triton version folder}, registered version or None). Raises
    `recsys.registry.floor.BelowFloor`, with the export written but nothing added or registered, when the model is to
    be registered and does not clear the floor on validation (unless ``allow_below_floor`` says why it may)."""
    from recsys.export.exporter import export_checkpoint

    checkpoint = final_checkpoint(run)
    out = Path(out) if out else checkpoint.parents[1] / "export"
    result = export_checkpoint(checkpoint, out, tolerance=tolerance)
    if register:  # before the repository: a model the registry refuses is not served either
        from recsys.registry.floor import BelowFloor, registration_check
        from recsys.registry.lineage import export_lineage

        try:
            registration_check(export_lineage(out), allow_below_floor)
        except BelowFloor as exc:
            raise BelowFloor(f"{exc}. The export itself is in {out}; nothing was added to a repository") from None
    triton_versions: dict[str, Path] = {}
    if repository:
        from recsys.deploy.repository import add_version
        from recsys.schema import load_schema

        schema_hash = load_schema().hash
        for name, folder in result.models.items():
            triton_versions[name] = add_version(repository, folder, expected_schema_hash=schema_hash)
    registered = None
    if register:
        from recsys.registry import register as add_to_registry

        registered = add_to_registry(out, triton_versions, registry=registry, allow_below_floor=allow_below_floor)
    return result, triton_versions, registered


def cmd_export(args: argparse.Namespace) -> int:
    if args.out and len(args.runs) > 1:
        raise RecsysError(f"--out names one output folder, but {len(args.runs)} runs were given: leave it out (each "
                          "export then goes to <run folder>/export)")
    for run in args.runs:
        _export_one(args, run)
    return 0


def _export_one(args: argparse.Namespace, run: str) -> None:
    result, triton_versions, registered = publish(run, args.out, args.repository, args.register, args.registry,
                                                  args.tolerance, args.allow_below_floor)
    for name, folder in result.models.items():
        print(f"{name:<12} {folder / 'model.onnx'}  (parity: max abs diff {result.parity[name]:.2g})")
    for name, version in triton_versions.items():
        print(f"{name:<12} added to the Triton repository as {version}")
    if result.index:
        i = result.index
        print(f"{'items':<12} {result.out / 'items'}  ({i['n_items']:,} items, {i['kind']} index, "
              f"recall@100 vs exact {i['recall_at_100']:.3f} on {i['queries']} users)")
    if registered is not None:
        from recsys.registry import registry_uri

        print(f"registered {registered.task} version {registered.version} in {registry_uri(args.registry)} "
              f"(see `recsys models show {registered.version} --task {registered.task}`)")
