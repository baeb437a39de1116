"""Export of trained runs: ONNX graphs that score like the TorchRec models, lineage, the item index."""

import json

import numpy as np
import onnx
import polars as pl
import pytest

from recsys.errors import RecsysError
from recsys.export import ann
from recsys.export.exporter import check_parity, export_checkpoint, run_onnx
from recsys.export.signature import ModelSignature, serving_inputs
from recsys.models.inputs import InputSpec

pytestmark = pytest.mark.integration


def test_dlrm_exports_to_onnx_that_scores_like_the_trained_model(dlrm_run, tiny_dataset, schema, tmp_path):
    result = export_checkpoint(dlrm_run.checkpoint, tmp_path)
    assert result.parity["dlrm"] <= 1e-5
    folder = result.models["dlrm"]
    signature = ModelSignature.read(folder)
    spec = InputSpec.for_part(schema, "dlrm")
    assert [s.name for s in signature.inputs] == [f.name for f in (*spec.sparse, *spec.dense)]
    history = next(s for s in signature.inputs if s.name == "user_history")
    length = next(f for f in schema.features if f.name == "user_history").length
    assert history.dtype == "int64" and history.shape == (length,)
    graph = onnx.load(str(folder / "model.onnx"))
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["schema_hash"] == schema.hash and props["dataset_id"] == tiny_dataset.id
    assert props["training_run"] == json.loads((tmp_path / "export.json").read_text())["lineage"]["training_run"]
    assert "test/auc" in json.loads(props["metrics"]) and float(props["parity_max_abs_diff"]) <= 1e-5
    assert not {"Loop", "Scan"} & {n.op_type for n in graph.graph.node}  # gathers, not EmbeddingBag loops
    # any batch size (the batch axis is dynamic), the same scores as whole batches
    rows = pl.read_parquet(tiny_dataset.shards("ranking", "test")[0]).head(7)
    inputs = serving_inputs(rows, signature.inputs)
    whole = run_onnx(folder / "model.onnx", inputs)
    one = run_onnx(folder / "model.onnx", {k: v[3:4] for k, v in inputs.items()})
    assert whole.shape == (7, 1) and np.all((whole > 0) & (whole < 1))
    np.testing.assert_allclose(one, whole[3:4], atol=1e-6)


def test_two_tower_exports_the_query_tower_and_an_item_index(two_tower_run, tiny_dataset, tmp_path):
    result = export_checkpoint(two_tower_run.checkpoint, tmp_path)
    assert set(result.models) == {"query_tower"}
    assert result.parity["query_tower"] <= 1e-5 and result.parity["item_embeddings"] <= 1e-5
    signature = ModelSignature.read(result.models["query_tower"])
    users = tiny_dataset.online("users").head(5)
    vectors = run_onnx(result.models["query_tower"] / "model.onnx", serving_inputs(users, signature.inputs))
    assert vectors.shape == (5, signature.outputs[0].shape[0])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    index, item_ids, info = ann.load_index(tmp_path / "items")
    assert info.n_items == len(item_ids) == tiny_dataset.online("items").height and info.recall_at_100 >= 0.95
    embeddings = np.load(tmp_path / "items" / "embeddings.npy", allow_pickle=False)
    _, found = index.search(vectors, 10)
    best = np.argsort(-(vectors @ embeddings.T), axis=1)[:, :10]
    np.testing.assert_array_equal(found, best)  # exact search on this small catalogue


def test_a_parity_failure_names_the_model_and_the_difference():
    with pytest.raises(RecsysError, match=r"parity failed for dlrm: max abs difference 0.001 .* exceeds 1e-05"):
        check_parity("dlrm", np.zeros((4, 1)), np.full((4, 1), 1e-3, dtype=np.float32), 1e-5)
    with pytest.raises(RecsysError, match="returned shape"):
        check_parity("dlrm", np.zeros((4, 1)), np.zeros((0, 1), dtype=np.float32), 1e-5)
