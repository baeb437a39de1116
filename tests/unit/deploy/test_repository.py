"""The Triton model repository: configs valid under Triton's own schema, GPU and CPU twins agreeing, versions."""

import json
import shutil
import subprocess

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from recsys.deploy.repository import (
    CONFIG_FILE,
    CPU_CONFIG_FILE,
    TritonModelSettings,
    add_version,
    models,
    parse_config,
    pin_versions,
    served_versions,
    version_of_run,
    versions,
)
from recsys.errors import RecsysError
from tests.conftest import ROOT
from tests.tiny_onnx import export_tiny_ranker


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_tiny_ranker(tmp_path_factory.mktemp("export") / "ranker", schema_hash="abc123")


@pytest.fixture
def repo(tmp_path):
    return tmp_path / "triton_models"


def _with_json(exported, tmp_path, **changes):
    """A copy of the export whose model.json is edited (the ONNX file stays as it was)."""
    copy = tmp_path / "edited"
    shutil.copytree(exported, copy)
    data = json.loads((copy / "model.json").read_text())
    for key, value in changes.items():
        target = data
        *path, last = key.split(".")
        for part in path:
            target = target[int(part)] if part.isdigit() else target[part]
        target[last] = value
    (copy / "model.json").write_text(json.dumps(data))
    return copy


def _all_configs(root):
    return sorted(root.glob("*/config.pbtxt")) + sorted(root.glob("*/configs/*.pbtxt"))


def test_configs_parse_with_tritons_schema_and_twins_agree(exported, repo):
    add_version(repo, exported)
    folder = repo / "ranker"
    # strict parsing: an unknown field or a misspelt enum fails here as it would in tritonserver
    gpu = text_format.Parse((folder / CONFIG_FILE).read_text(), mc.ModelConfig())
    cpu = text_format.Parse((folder / CPU_CONFIG_FILE).read_text(), mc.ModelConfig())
    for config in (gpu, cpu):
        assert config.name == "ranker"
        assert [(t.name, t.data_type, list(t.dims)) for t in config.input] == [
            ("item_id", mc.TYPE_INT64, [1]), ("history", mc.TYPE_INT64, [20]), ("dense", mc.TYPE_FP32, [3])]
        assert [(t.name, t.data_type, list(t.dims)) for t in config.output] == [("probability", mc.TYPE_FP32, [1])]
        assert config.parameters["schema_hash"].string_value == "abc123"
        assert config.parameters["dataset_id"].string_value == "ds-test"
        assert config.parameters["training_run"].string_value == "run-test"
    # the twins serve the same tensors with the same batching and versions
    assert gpu.input == cpu.input and gpu.output == cpu.output
    assert gpu.max_batch_size == cpu.max_batch_size == 1024
    assert gpu.dynamic_batching == cpu.dynamic_batching
    assert list(gpu.dynamic_batching.preferred_batch_size) == [256, 1024]
    assert gpu.dynamic_batching.max_queue_delay_microseconds == 500
    assert gpu.version_policy == cpu.version_policy and gpu.version_policy.latest.num_versions == 2
    # what differs: the GPU config runs ONNX Runtime natively with TensorRT FP16 ...
    assert gpu.platform == "onnxruntime_onnx" and not gpu.backend
    assert [(g.kind, g.count) for g in gpu.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 1)]
    (trt,) = gpu.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
    assert trt.parameters["trt_profile_max_shapes"] == "item_id:1024x1,history:1024x20,dense:1024x3"
    # ... the CPU twin runs the same model.onnx through the Python backend
    assert cpu.backend == "python" and not cpu.platform
    assert [(g.kind, g.count) for g in cpu.instance_group] == [(mc.ModelInstanceGroup.KIND_CPU, 1)]
    assert not cpu.HasField("optimization")


@pytest.mark.parametrize("root", ["generated", "project"])
def test_every_config_in_a_repository_parses(exported, repo, root):
    """Also the project's own triton_models/, once configs are committed there."""
    if root == "generated":
        add_version(repo, exported)
        add_version(repo, _with_json(exported, repo.parent, name="query_tower"))
    folder = repo if root == "generated" else ROOT / "triton_models"
    for path in _all_configs(folder):
        config = parse_config(path)
        assert config.name == path.parents[1 if path.parent.name == "configs" else 0].name
        assert config.max_batch_size > 0 and config.input and config.output
        assert config.parameters["schema_hash"].string_value
    if root == "generated":
        assert len(_all_configs(folder)) == 4 and models(repo) == ["query_tower", "ranker"]


def test_versions_are_numbered_and_complete(exported, repo):
    assert add_version(repo, exported) == repo / "ranker" / "1"
    assert add_version(repo, exported) == repo / "ranker" / "2"
    assert add_version(repo, exported, version=7) == repo / "ranker" / "7"
    assert add_version(repo, exported) == repo / "ranker" / "8"
    assert versions(repo, "ranker") == [1, 2, 7, 8]
    for v in (1, 8):
        folder = repo / "ranker" / str(v)
        assert sorted(p.name for p in folder.iterdir()) == ["model.json", "model.onnx", "model.py"]
        assert (folder / "model.onnx").read_bytes() == (exported / "model.onnx").read_bytes()
        compile((folder / "model.py").read_text(), "model.py", "exec")  # the Python backend's model is valid
    assert not list((repo / "ranker").glob(".*"))  # no staging folders or temp files left
    with pytest.raises(RecsysError, match="version 2 already exists"):
        add_version(repo, exported, version=2)
    with pytest.raises(RecsysError, match="must be >= 1"):
        add_version(repo, exported, version=0)


def test_the_version_a_training_run_was_added_as_is_found(exported, repo, tmp_path):
    for run in ("run-a", "run-b"):
        add_version(repo, _with_json(exported, tmp_path / run, **{"metadata.training_run": run}))
    assert version_of_run(repo, "ranker", "run-a") == repo / "ranker" / "1"
    assert version_of_run(repo, "ranker", "run-b") == repo / "ranker" / "2"
    assert version_of_run(repo, "ranker", "run-c") is None and version_of_run(repo, "other", "run-a") is None


def test_a_model_for_another_schema_is_refused(exported, repo):
    with pytest.raises(RecsysError) as err:
        add_version(repo, exported, expected_schema_hash="fff999")
    assert "abc123" in str(err.value) and "fff999" in str(err.value)
    assert not repo.exists() or not any(repo.iterdir())  # nothing written
    assert add_version(repo, exported, expected_schema_hash="abc123").name == "1"


def test_a_new_schema_cannot_join_versions_of_the_old_one(exported, repo, tmp_path):
    add_version(repo, exported)
    other = export_tiny_ranker(tmp_path / "other", schema_hash="def456")
    with pytest.raises(RecsysError, match=r"serves schema hash abc123 .* schema hash def456"):
        add_version(repo, other)
    assert versions(repo, "ranker") == [1]
    assert parse_config(repo / "ranker" / CONFIG_FILE).parameters["schema_hash"].string_value == "abc123"


def test_inconsistent_exports_are_refused(exported, repo, tmp_path):
    # the ONNX metadata and model.json disagree on the schema
    with pytest.raises(RecsysError, match=r"carries schema hash 'abc123' in its ONNX metadata but model\.json says"):
        add_version(repo, _with_json(exported, tmp_path / "a", **{"metadata.schema_hash": "zzz"}))
    # the signature promises a shape the graph does not have
    with pytest.raises(RecsysError, match=r"input 'history' has shape \[None, 20\], the signature says \[batch, 10\]"):
        add_version(repo, _with_json(exported, tmp_path / "b", **{"inputs.1.shape": [10]}))
    with pytest.raises(RecsysError, match=r"input 'dense' has ONNX element type 1, the signature says int64"):
        add_version(repo, _with_json(exported, tmp_path / "c", **{"inputs.2.dtype": "int64"}))
    with pytest.raises(RecsysError, match="ONNX outputs"):
        add_version(repo, _with_json(exported, tmp_path / "d", **{"outputs.0.name": "score"}))
    with pytest.raises(RecsysError, match="not a valid Triton model name"):
        add_version(repo, _with_json(exported, tmp_path / "e", name="../ranker"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecsysError, match="holds no exported model signature"):
        add_version(repo, tmp_path / "empty")
    assert not repo.exists() or not any(repo.iterdir())


def test_settings_are_checked_and_written(exported, repo):
    with pytest.raises(RecsysError, match=r"preferred_batch_sizes \[2048\] outside 1..max_batch_size"):
        TritonModelSettings(preferred_batch_sizes=(2048,))
    with pytest.raises(RecsysError, match="num_versions must be >= 1"):
        TritonModelSettings(num_versions=0)
    settings = TritonModelSettings(max_batch_size=64, preferred_batch_sizes=(16, 64), num_versions=1,
                                   cpu_instances=2, tensorrt_fp16=False)
    add_version(repo, exported, settings=settings)
    gpu, cpu = parse_config(repo / "ranker" / CONFIG_FILE), parse_config(repo / "ranker" / CPU_CONFIG_FILE)
    assert gpu.max_batch_size == cpu.max_batch_size == 64 and cpu.instance_group[0].count == 2
    assert gpu.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters["precision_mode"] == "FP32"


def _without_policy(path):
    config = parse_config(path)
    config.ClearField("version_policy")
    return config


def test_a_rollout_pins_the_served_versions_and_adding_a_version_keeps_them(exported, repo):
    for _ in range(2):
        add_version(repo, exported)
    folder = repo / "ranker"
    assert served_versions(repo, "ranker") is None  # no rollout manages it yet: latest 2
    assert parse_config(folder / CPU_CONFIG_FILE).version_policy.latest.num_versions == 2
    unpinned = {f: _without_policy(folder / f) for f in (CONFIG_FILE, CPU_CONFIG_FILE)}
    assert pin_versions(repo, "ranker", ["1"]) == (folder / CONFIG_FILE, folder / CPU_CONFIG_FILE)
    for f in (CONFIG_FILE, CPU_CONFIG_FILE):
        policy = parse_config(folder / f).version_policy
        assert policy.WhichOneof("policy_choice") == "specific" and list(policy.specific.versions) == [1]
        assert _without_policy(folder / f) == unpinned[f]  # the rest of each config is kept
    assert served_versions(repo, "ranker") == [1]
    # a new version is not served until a rollout names it
    assert add_version(repo, exported).name == "3"
    assert served_versions(repo, "ranker") == [1]
    assert [list(parse_config(folder / f).version_policy.specific.versions) for f in (CONFIG_FILE, CPU_CONFIG_FILE)] \
        == [[1], [1]]
    pin_versions(repo, "ranker", ["3", "1"])
    assert served_versions(repo, "ranker") == [1, 3]
    with pytest.raises(RecsysError, match=r"model 'ranker' has no version\(s\) \[7\] .* \(there: \[1, 2, 3\]\)"):
        pin_versions(repo, "ranker", ["1", "7"])
    with pytest.raises(RecsysError, match="pinning no versions would serve nothing"):
        pin_versions(repo, "ranker", [])
    assert served_versions(repo, "ranker") == [1, 3]  # refused pins change nothing
    assert not list(folder.glob(".*")) and not list((folder / "configs").glob(".*"))


def test_binaries_are_ignored_by_git_and_configs_are_not():
    paths = ["triton_models/ranker/1/model.onnx", "triton_models/ranker/12/model.py",
             "triton_models/ranker/.incoming-1a2b/model.onnx", "triton_models/ranker/model.onnx",
             "triton_models/ranker/config.pbtxt", "triton_models/ranker/configs/cpu.pbtxt",
             "triton_models/README.md"]
    out = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.split() == paths[:4]
