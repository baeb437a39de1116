import numpy as np
import polars as pl
import pytest

from recsys.models.inputs import InputSpec
from recsys.training.data import (
    EpochBatches,
    batches,
    click_rate,
    item_log_q,
    ranking_batches,
    read_shard,
    retrieval_batches,
)


def test_workers_read_disjoint_shards_covering_the_split(tiny_dataset):
    cols = ["_event_id"]
    parts = [read_shard(tiny_dataset, "ranking", "train", k, cols) for k in range(2)]
    ids = pl.concat(parts)["_event_id"]
    assert ids.is_unique().all() and ids.len() == tiny_dataset.manifest.splits["ranking"]["train"]["rows"]
    with pytest.raises(ValueError, match="shard 2 does not exist: ranking/train has 2 shards"):
        read_shard(tiny_dataset, "ranking", "train", 2, cols)


def test_seeded_shuffle_is_reproducible_and_complete(tiny_dataset):
    frame = read_shard(tiny_dataset, "ranking", "train", 0, ["_event_id"])
    first = pl.concat(batches(frame, 100, shuffle_seed=1))["_event_id"]
    again = pl.concat(batches(frame, 100, shuffle_seed=1))["_event_id"]
    other = pl.concat(batches(frame, 100, shuffle_seed=2))["_event_id"]
    assert first.equals(again) and not first.equals(other)
    assert first.sort().equals(frame["_event_id"].sort())


def test_batches_carry_labels_and_log_q(tiny_dataset, schema):
    spec = InputSpec.for_part(schema, "dlrm")
    frame = read_shard(tiny_dataset, "ranking", "train", 0, spec.columns)
    sizes = [len(b) for b in ranking_batches(frame, spec, 256)]
    assert sum(sizes) == frame.height and max(sizes) == 256
    log_q = item_log_q(tiny_dataset, schema)
    assert log_q.shape == (tiny_dataset.manifest.cardinalities["item_id"],)
    assert np.exp(log_q).sum() == pytest.approx(1.0, rel=1e-5)
    user, item = InputSpec.for_part(schema, "two_tower.user"), InputSpec.for_part(schema, "two_tower.item")
    retrieval = read_shard(tiny_dataset, "retrieval", "train", 0, list({*user.columns, *item.columns}))
    batch = next(retrieval_batches(retrieval, user, item, "item_id", log_q, 64, shuffle_seed=0))
    assert len(batch) == 64 and batch.log_q.shape == (64,)
    assert np.allclose(batch.log_q.numpy(), log_q[batch.item_ids.numpy()])
    # most popular training item has the highest sampling probability
    counts = tiny_dataset.read("retrieval", "train")["item_id"].value_counts().sort("count")
    assert log_q[counts["item_id"][-1]] == log_q.max()


def test_the_click_rate_is_the_share_of_clicked_training_impressions(tiny_dataset, schema):
    labels = np.concatenate([pl.read_parquet(p)["click"].to_numpy() for p in tiny_dataset.shards("ranking", "train")])
    assert click_rate(tiny_dataset, schema) == pytest.approx(labels.sum() / len(labels), abs=1e-7)  # (float32 labels)


def test_training_by_steps_cycles_through_passes_each_in_its_own_order():
    """10 rows in batches of 2 (5 per pass), epochs of 3 steps: epoch 0 is pass 0's batches 0-2, epoch 1 pass 0's
    3-4 then pass 1's first, epoch 2 pass 1's 1-3 … each pass shuffled with seed + pass number."""
    frame = pl.DataFrame({"row": list(range(10))})
    make = lambda seed, skip: (b["row"].to_list() for b in batches(frame, 2, seed, skip=skip))  # noqa: E731
    passes = [list(make(100 + p, 0)) for p in range(3)]  # the three passes, whole
    assert passes[0] != passes[1] and sorted(r for b in passes[0] for r in b) == list(range(10))
    done = {"epochs": 0}
    steps = EpochBatches(make, shuffle=True, seed=100, epoch=lambda: done["epochs"], steps=3, per_pass=5)
    seen = []
    for epoch in range(4):
        done["epochs"] = epoch
        seen.append(list(steps))
    assert seen == [passes[0][0:3], passes[0][3:5] + passes[1][0:1], passes[1][1:4], passes[1][4:5] + passes[2][0:2]]
    # an epoch asked for again (a resumed run) is the same batches
    done["epochs"] = 1
    assert list(steps) == seen[1]
    # without steps an epoch is one pass, epoch e seeded seed + e (as before)
    assert list(EpochBatches(make, shuffle=True, seed=100, epoch=lambda: 2)) == passes[2]
    with pytest.raises(ValueError, match="training by steps needs the batches of a pass"):
        EpochBatches(make, shuffle=True, steps=3)
