"""The Triton model repository: exported models as numbered versions, with configs generated from their signature.

One folder per model (named by the signature)::

    <repo>/<name>/config.pbtxt        what a production GPU Triton runs (`model_config.gpu_config`)
    <repo>/<name>/configs/cpu.pbtxt   the CPU twin (``--model-config-name=cpu``, `model_config.cpu_config`): the
                                      Python backend running the same ONNX file; same tensors and batching
    <repo>/<name>/<version>/model.onnx
    <repo>/<name>/<version>/model.json   the exported model's signature and lineage
    <repo>/<name>/<version>/model.py     the Python backend's model (a copy of ``python_backend_model.py``)

Both configs are rewritten from the newest signature whenever a version is added; version folders hold
binaries and stay out of git. A version is staged in a hidden folder and renamed into place, so Triton never
sees half of one. The schema hash travels in the configs' ``parameters``; the Python backend refuses to load an
ONNX file whose own metadata carries another hash.

Which versions Triton serves is the configs' version policy, and the files are its one source of truth (any
restart serves what they say): ``latest: N`` for a model no rollout manages yet; once a rollout moves Triton to
a state, `pin_versions` writes exactly that state's versions into both configs as a ``specific`` policy, and
adding a version keeps it (a new version is not served until a rollout names it). Both writers hold a ``flock``
on the model's folder while they read and rewrite the configs, so neither undoes the other.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recsys.deploy.model_config import (
    DEFAULT_SETTINGS,
    TritonModelSettings,
    cpu_config,
    gpu_config,
    parse_config,
    render,
    with_versions,
)
from recsys.errors import RecsysError
from recsys.export.signature import SIGNATURE_FILE, ModelSignature
from recsys.io import atomic_write_text

ONNX_FILE = "model.onnx"
PYTHON_MODEL_FILE = "model.py"
CONFIG_FILE = "config.pbtxt"
CPU_CONFIG_NAME = "cpu"  # tritonserver --model-config-name=cpu reads configs/cpu.pbtxt
CPU_CONFIG_FILE = f"configs/{CPU_CONFIG_NAME}.pbtxt"
PYTHON_BACKEND_SOURCE = Path(__file__).with_name("python_backend_model.py")

ONNX_DTYPES = {"int64": 7, "float32": 1}  # onnx.TensorProto.INT64 / FLOAT
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


# ---------------------------------------------------------------- the repository


def versions(repo_root: str | Path, name: str) -> list[int]:
    """A model's version numbers in the repository, ascending."""
    folder = Path(repo_root) / name
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def version_of_run(repo_root: str | Path, name: str, training_run: str) -> Path | None:
    """The newest version folder of ``name`` exported from ``training_run`` (by its model.json), or None."""
    for v in reversed(versions(repo_root, name)):
        folder = Path(repo_root) / name / str(v)
        try:
            if ModelSignature.read(folder).metadata.get("training_run") == training_run:
                return folder
        except RecsysError:  # a version folder without a signature: not ours to judge here
            continue
    return None


def models(repo_root: str | Path) -> list[str]:
    """The models in the repository that have a config and at least one version."""
    root = Path(repo_root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if (p / CONFIG_FILE).is_file() and versions(root, p.name))


def _onnx_metadata_and_graph(path: Path):
    import onnx  # only when adding a model

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # a truncated or foreign file
        raise RecsysError(f"{path} is not a readable ONNX model: {exc}") from exc
    return {p.key: p.value for p in model.metadata_props}, model.graph


def _check_graph(graph, sig: ModelSignature, path: Path) -> None:
    """The ONNX graph takes and returns exactly what the signature (hence the config) says."""
    for kind, specs, values in (("input", sig.inputs, graph.input), ("output", sig.outputs, graph.output)):
        by_name = {v.name: v for v in values}
        if kind == "input":  # initialisers may be listed as inputs by old exporters
            initialisers = {t.name for t in graph.initializer}
            by_name = {n: v for n, v in by_name.items() if n not in initialisers}
        expected = [s.name for s in specs]
        if sorted(by_name) != sorted(expected):
            raise RecsysError(f"{path}: ONNX {kind}s {sorted(by_name)} differ from the signature's {sorted(expected)}")
        for spec in specs:
            tensor = by_name[spec.name].type.tensor_type
            if tensor.elem_type != ONNX_DTYPES[spec.dtype]:
                raise RecsysError(f"{path}: {kind} {spec.name!r} has ONNX element type {tensor.elem_type}, "
                                  f"the signature says {spec.dtype} ({ONNX_DTYPES[spec.dtype]})")
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
            if not dims or dims[0] is not None:
                raise RecsysError(f"{path}: {kind} {spec.name!r} has shape {dims}; the first (batch) axis must be "
                                  "dynamic (export with a dynamic batch axis)")
            if len(dims) != 1 + len(spec.shape) or any(d is not None and d != s for d, s in zip(dims[1:], spec.shape,
                                                                                               strict=True)):
                raise RecsysError(f"{path}: {kind} {spec.name!r} has shape {dims}, the signature says "
                                  f"[batch, {', '.join(map(str, spec.shape))}]")


def _config_files(repo_root: str | Path, name: str) -> tuple[Path, Path]:
    folder = Path(repo_root) / name
    return folder / CONFIG_FILE, folder / CPU_CONFIG_FILE


@contextmanager
def _configs_locked(repo_root: str | Path, name: str) -> Iterator[None]:
    """An exclusive ``flock`` on the model's folder (no lock file), held while its configs are read and rewritten."""
    folder = Path(repo_root) / name
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def served_versions(repo_root: str | Path, name: str) -> list[int] | None:
    """The versions a model's configs pin with a ``specific`` policy (both configs' together), ascending; None
    when neither pins any (``latest: N``: no rollout manages the model yet)."""
    pinned: set[int] | None = None
    for path in _config_files(repo_root, name):
        if path.is_file() and (policy := parse_config(path).version_policy).HasField("specific"):
            pinned = (pinned or set()) | set(policy.specific.versions)
    return None if pinned is None else sorted(pinned)


def pin_versions(repo_root: str | Path, name: str, served: list[int] | list[str]) -> tuple[Path, Path]:
    """Make a model's configs serve exactly ``served``: a ``specific`` version policy in ``config.pbtxt`` and
    ``configs/cpu.pbtxt``, each replaced atomically and durably; everything else in them is kept."""
    numbers = sorted({int(v) for v in served})
    if not numbers:
        raise RecsysError(f"model {name!r}: pinning no versions would serve nothing; name at least one")
    missing = sorted(set(numbers) - set(versions(repo_root, name)))
    if missing:
        raise RecsysError(f"model {name!r} has no version(s) {missing} in {repo_root} "
                          f"(there: {versions(repo_root, name) or 'none'})")
    files = _config_files(repo_root, name)
    absent = [str(p) for p in files if not p.is_file()]
    if absent:
        raise RecsysError(f"model {name!r}: no config {', '.join(absent)} to pin versions {numbers} in")
    with _configs_locked(repo_root, name):
        for path in files:
            atomic_write_text(path, render(with_versions(parse_config(path), numbers)), fsync=True)
    return files


def write_configs(repo_root: str | Path, sig: ModelSignature,
                  settings: TritonModelSettings = DEFAULT_SETTINGS) -> tuple[Path, Path]:
    """(Re)write a model's ``config.pbtxt`` and ``configs/cpu.pbtxt`` from its signature, keeping the versions a
    rollout pinned (``settings.num_versions`` applies only to a model no rollout manages yet)."""
    gpu, cpu = _config_files(repo_root, sig.name)
    with _configs_locked(repo_root, sig.name):
        pinned = served_versions(repo_root, sig.name)
        for path, config in ((gpu, gpu_config(sig, settings)), (cpu, cpu_config(sig, settings))):
            atomic_write_text(path, render(config if pinned is None else with_versions(config, pinned)))
    return gpu, cpu


def add_version(repo_root: str | Path, exported_folder: str | Path, version: int | None = None,
                expected_schema_hash: str | None = None,
                settings: TritonModelSettings = DEFAULT_SETTINGS) -> Path:
    """Put an exported model (a folder with ``model.onnx`` and ``model.json``) into the repository.

    Args:
        repo_root: the Triton model repository (created if missing).
        exported_folder: what the exporter wrote.
        version: the version number; default the next free one (1 for a new model).
        expected_schema_hash: refuse a model exported for another feature schema.
        settings: batching, instances and accelerator settings written into both configs.

    Returns:
        The new version folder, ``<repo_root>/<name>/<version>``.
    """
    exported = Path(exported_folder)
    sig = ModelSignature.read(exported)
    onnx_path = exported / ONNX_FILE
    if not onnx_path.is_file():
        raise RecsysError(f"{exported} holds no {ONNX_FILE}")
    if not NAME_PATTERN.fullmatch(sig.name):
        raise RecsysError(f"model name {sig.name!r} in {exported / SIGNATURE_FILE} is not a valid Triton model name "
                          "(letters, digits, '_', '.', '-')")
    schema_hash = sig.metadata.get("schema_hash")
    if not schema_hash:
        raise RecsysError(f"{exported / SIGNATURE_FILE} carries no schema_hash in its metadata")
    if expected_schema_hash is not None and schema_hash != expected_schema_hash:
        raise RecsysError(f"model {sig.name!r} in {exported} was exported for schema hash {schema_hash}, "
                          f"expected schema hash {expected_schema_hash}; refusing to add it")
    onnx_meta, graph = _onnx_metadata_and_graph(onnx_path)
    if onnx_meta.get("schema_hash") != schema_hash:
        raise RecsysError(f"{onnx_path} carries schema hash {onnx_meta.get('schema_hash')!r} in its ONNX metadata "
                          f"but {SIGNATURE_FILE} says {schema_hash!r}; the export is inconsistent")
    _check_graph(graph, sig, onnx_path)

    root = Path(repo_root)
    folder = root / sig.name
    existing = versions(root, sig.name)
    if existing and (folder / CONFIG_FILE).is_file():
        served = parse_config(folder / CONFIG_FILE).parameters["schema_hash"].string_value
        if served and served != schema_hash:
            raise RecsysError(f"model {sig.name!r} in {root} serves schema hash {served} (versions {existing}); "
                              f"a version with schema hash {schema_hash} could not be served beside them. Remove "
                              "the old versions first, or export under another model name")
    if version is not None and (version < 1 or version in existing):
        raise RecsysError(f"model {sig.name!r}: version {version} " + ("already exists in " + str(folder)
                          if version in existing else "must be >= 1"))

    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".incoming-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        shutil.copyfile(onnx_path, staging / ONNX_FILE)
        sig.write(staging)
        shutil.copyfile(PYTHON_BACKEND_SOURCE, staging / PYTHON_MODEL_FILE)
        write_configs(root, sig, settings)
        number = version or (max(existing, default=0) + 1)
        while True:
            target = folder / str(number)
            try:
                os.rename(staging, target)  # fails if another writer took the number meanwhile
                return target
            except OSError:
                if version is not None or not target.exists():
                    raise
                number += 1
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
