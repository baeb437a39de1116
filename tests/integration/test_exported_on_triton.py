"""The trained models end to end: checkpoint -> `recsys export --repository` -> the real tritonserver, whose
answers over HTTP and gRPC match the trained TorchRec models on real rows within 1e-5."""

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from recsys.cli import main as recsys_main
from recsys.deploy import server
from recsys.export.signature import ModelSignature, serving_inputs
from recsys.models.inputs import make_batch
from recsys.training.checkpoint import load_model
from tests.integration.test_triton import inputs_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(dlrm_run, two_tower_run, tmp_path_factory):
    work = tmp_path_factory.mktemp("served")
    repo = work / "triton_models"
    # both runs in one call, each into <run>/export, as the demo exports them
    assert recsys_main(["export", dlrm_run.path, two_tower_run.path, "--repository", str(repo)]) == 0
    assert all((Path(run.path) / "export" / "export.json").is_file() for run in (dlrm_run, two_tower_run))
    info = server.start(repo, ["dlrm", "query_tower"], run_dir=work / "server")
    yield repo, info
    server.stop(work / "server")


def test_one_output_folder_for_several_runs_is_one_clear_error(dlrm_run, two_tower_run, tmp_path, capsys):
    assert recsys_main(["export", dlrm_run.path, two_tower_run.path, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out names one output folder, but 2 runs were given") and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_scores_like_the_trained_models(served, dlrm_run, two_tower_run, tiny_dataset, protocol):
    repo, info = served
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(info.http_url if protocol == "http" else info.grpc_url)
    cases = ((dlrm_run, "dlrm", "ranking"), (two_tower_run, "query_tower", "retrieval"))
    for run, name, task in cases:
        model, _ = load_model(run.checkpoint)
        rows = pl.read_parquet(tiny_dataset.shards(task, "test")[0]).head(37)
        signature = ModelSignature.read(repo / name / "1")
        with torch.no_grad():
            if name == "dlrm":
                expected = torch.sigmoid(model(make_batch(rows, model.spec))).numpy()[:, None]
            else:
                expected = model.user_tower(make_batch(rows, model.user_spec)).numpy()
        result = client.infer(name, inputs_for(module, serving_inputs(rows, signature.inputs)))
        answer = result.as_numpy(signature.outputs[0].name)
        assert answer.shape == expected.shape
        np.testing.assert_allclose(answer, expected, atol=1e-5)
        assert client.get_model_metadata(name) is not None
    client.close()
