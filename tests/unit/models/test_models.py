"""The models built from the schema: inputs, shapes, losses, and that they can learn."""

import numpy as np
import polars as pl
import pytest
import torch

from recsys.config import ConfigError
from recsys.models.config import DLRMConfig, TwoTowerConfig
from recsys.models.dlrm import DLRMTrain, Ranker
from recsys.models.inputs import InputSpec, make_batch
from recsys.models.two_tower import TwoTower, TwoTowerTrain


@pytest.fixture(scope="module")
def ranking(tiny_dataset):
    return tiny_dataset.read("ranking", "train").head(512)


@pytest.fixture(scope="module")
def retrieval(tiny_dataset):
    return tiny_dataset.read("retrieval", "train").unique("item_id", keep="first", maintain_order=True).head(256)


def test_batch_holds_every_input_and_drops_history_padding(tiny_dataset, schema, ranking):
    spec = InputSpec.for_part(schema, "dlrm")
    batch = make_batch(ranking, spec)
    assert batch.dense.shape == (ranking.height, len(spec.dense)) and batch.dense.dtype == torch.float32
    assert batch.sparse.keys() == [f.name for f in spec.sparse]
    lengths = batch.sparse.to_dict()
    history = schema.history[0].name
    expected = (ranking[history].to_numpy() != 0).sum(axis=1)
    assert np.array_equal(lengths[history].lengths().numpy(), expected)
    assert (lengths["item_id"].lengths() == 1).all()
    assert torch.equal(lengths["item_id"].values(), torch.tensor(ranking["item_id"].to_numpy()))
    assert torch.equal(batch.labels, torch.tensor(ranking["click"].to_numpy()))
    tables = {t.name: t for t in spec.embedding_tables(tiny_dataset.manifest.cardinalities, 8)}
    assert tables["t_item_id"].feature_names == ["user_history", "item_id"]  # one table, shared
    assert tables["t_item_id"].num_embeddings == tiny_dataset.manifest.cardinalities["item_id"]


def _overfit(step, params, n=40):
    torch.manual_seed(0)
    opt = torch.optim.Adam(params, lr=0.01)
    losses = []
    for _ in range(n):
        loss = step()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("interaction", ["dot", "dcn"])
def test_an_untrained_dlrm_started_at_the_click_rate_predicts_about_it(tiny_dataset, schema, ranking, interaction):
    torch.manual_seed(0)
    model = Ranker(schema, tiny_dataset.manifest.cardinalities, DLRMConfig(interaction=interaction)).eval()
    batch = make_batch(ranking, model.spec)
    with torch.no_grad():
        before = torch.sigmoid(model(batch)).mean().item()
        model.start_at_click_rate(0.02)
        after = torch.sigmoid(model(batch)).mean().item()
    assert abs(before - 0.5) < 0.2  # (an untrained model's logits sit near 0)
    assert 0.01 < after < 0.04  # about the rate: the rest of the network adds only small logits at the start
    with pytest.raises(ValueError, match="between 0 and 1"):
        model.start_at_click_rate(0.0)


@pytest.mark.parametrize("interaction", ["dot", "dcn"])
def test_dlrm_scores_every_row_and_learns(tiny_dataset, schema, ranking, interaction):
    torch.manual_seed(0)
    model = Ranker(schema, tiny_dataset.manifest.cardinalities, DLRMConfig(interaction=interaction))
    batch = make_batch(ranking, model.spec)
    train = DLRMTrain(model)
    loss, logits = train(batch)
    assert logits.shape == (ranking.height,) and torch.isfinite(loss)
    losses = _overfit(lambda: train(batch)[0], train.parameters())
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]


def test_two_tower_outputs_unit_vectors_and_learns(tiny_dataset, schema, retrieval):
    torch.manual_seed(0)
    cfg = TwoTowerConfig(embedding_dim=16, output_dim=32)
    model = TwoTower(schema, tiny_dataset.manifest.cardinalities, cfg)
    users, items = make_batch(retrieval, model.user_spec), make_batch(retrieval, model.item_spec)
    u, v = model(users, items)
    assert u.shape == v.shape == (retrieval.height, 32)
    assert torch.allclose(u.norm(dim=1), torch.ones(len(u)), atol=1e-5)
    train = TwoTowerTrain(model, cfg)
    ids = torch.tensor(retrieval["item_id"].to_numpy())
    log_q = torch.full((len(ids),), -np.log(len(ids)), dtype=torch.float32)
    losses = _overfit(lambda: train(users, items, ids, log_q)[0], train.parameters())
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]


def test_in_batch_loss_masks_repeated_items_and_applies_log_q(tiny_dataset, schema, retrieval):
    cfg = TwoTowerConfig(embedding_dim=8, output_dim=8)
    model = TwoTower(schema, tiny_dataset.manifest.cardinalities, cfg)
    rows = pl.concat([retrieval.head(3), retrieval.head(1)])  # item of row 0 appears again as row 3
    users, items = make_batch(rows, model.user_spec), make_batch(rows, model.item_spec)
    ids = torch.tensor(rows["item_id"].to_numpy())
    log_q = torch.tensor([-1.0, -2.0, -3.0, -1.0])
    _, logits = TwoTowerTrain(model, cfg)(users, items, ids, log_q)
    assert logits[0, 3] == float("-inf") and logits[3, 0] == float("-inf")
    assert torch.isfinite(logits[0, 0]) and torch.isfinite(logits[3, 3])
    _, plain = TwoTowerTrain(model, TwoTowerConfig(embedding_dim=8, output_dim=8, logq_correction=False))(
        users, items, ids, log_q)
    assert torch.allclose(logits[1, 2], plain[1, 2] + 3.0)  # popular items pay less as negatives


def test_dlrm_config_is_checked():
    with pytest.raises(ConfigError, match="interaction must be one of"):
        DLRMConfig(interaction="attention")
    with pytest.raises(ConfigError, match="dense_layers must end with embedding_dim=16"):
        DLRMConfig(dense_layers=(64, 32))
