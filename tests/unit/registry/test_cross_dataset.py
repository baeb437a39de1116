"""A dataset's test events encoded with another dataset's encoders, as the promotion gate re-evaluates a model
trained on another dataset: checked against that other dataset's own build (no model needed)."""

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recsys.data.dataset import Dataset, DatasetError
from recsys.data.features import META_EVENT_ID, META_ITEM, META_USER
from recsys.data.reencoding import builder_with, encoded_at_test_start, encoded_split, validated_source
from recsys.evaluation.retrieval import retrieval_task
from tests.unit.registry.conftest import GROWN_ITEMS

REORDERED = ("user_country", "user_device", "item_category", "item_brand")


def test_the_grown_shop_has_the_same_test_events_under_other_encoders(tiny_dataset, grown_dataset, schema):
    mine, theirs = tiny_dataset.encoders(schema).fitted, grown_dataset.encoders(schema).fitted
    for table in REORDERED:  # the same values, in another order: same table sizes, other indices
        assert set(mine[table].vocab) == set(theirs[table].vocab) and mine[table].vocab != theirs[table].vocab, table
    assert mine["item_price_bucket"].boundaries != theirs["item_price_bucket"].boundaries
    assert theirs["item_id"].cardinality == mine["item_id"].cardinality + GROWN_ITEMS
    own, grown = (d.read("ranking", "test").sort(META_EVENT_ID) for d in (tiny_dataset, grown_dataset))
    assert own[META_EVENT_ID].to_list() == grown[META_EVENT_ID].to_list()  # the same impressions
    for column in REORDERED:  # but another model's indices in the grown dataset's shards
        assert own[column].to_list() != grown[column].to_list(), column


def test_test_events_encoded_with_the_other_datasets_encoders_are_its_own_rows(tiny_dataset, grown_dataset,
                                                                                 schema):
    builder = builder_with(grown_dataset, schema, tiny_dataset.encoders(schema))
    for task in ("ranking", "retrieval"):
        rows = encoded_split(builder, grown_dataset, task, "test").sort(META_EVENT_ID)
        # the ground truth: the same events as the tiny dataset's build encoded them
        assert_frame_equal(rows, tiny_dataset.read(task, "test").sort(META_EVENT_ID))
    tables = encoded_at_test_start(builder, grown_dataset)
    for name, key in (("users", META_USER), ("items", META_ITEM)):
        own = tiny_dataset.at_test_start(name).sort(key)
        known = tables[name].filter(pl.col(key).is_in(own[key].implode())).sort(key).select(own.columns)
        assert_frame_equal(known, own)
    new = tables["items"].filter(~pl.col(META_ITEM).is_in(tiny_dataset.at_test_start("items")[META_ITEM].implode()))
    assert new.height == GROWN_ITEMS and (new["item_id"] == 0).all()  # not in the catalogue it knows: unknown
    # the retrieval task keeps its users, candidates and relevant items, with the other encoders' inputs
    task = retrieval_task(grown_dataset)
    other = task.encoded_with(tables["users"], tables["items"])
    assert other.users[META_USER].to_list() == task.users[META_USER].to_list()
    assert other.items[META_ITEM].to_list() == task.items[META_ITEM].to_list()
    assert other.relevant is task.relevant and other.exclude is task.exclude
    assert not other.items["item_brand"].equals(task.items["item_brand"])
    with pytest.raises(ValueError, match=r"3 of the task's \d+ _item rows are not in the table"):
        task.encoded_with(tables["users"], tables["items"].slice(3))


def test_events_that_changed_or_vanished_since_the_build_are_refused(grown_dataset, tmp_path):
    recorded = Path(grown_dataset.manifest.sources["validated"]["events"]["path"])
    assert validated_source(grown_dataset) == recorded.parent
    copy = shutil.copytree(grown_dataset.path, tmp_path / grown_dataset.id)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["sources"]["validated"]["items"]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=rf"dataset {grown_dataset.id} was built from .*items.parquet with sha256 "
                                           r"0{64}, but that file now has sha256 [0-9a-f]{64}"):
        validated_source(Dataset.open(copy))
    manifest["sources"]["validated"]["events"]["path"] = str(tmp_path / "gone" / "events.parquet")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match=r"built from .*gone/events.parquet, which is gone"):
        validated_source(Dataset.open(copy))
