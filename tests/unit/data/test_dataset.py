"""Versioned datasets: content-hash ids, time splits, shards, manifest, refusal of a foreign schema."""

import json
from dataclasses import replace

import polars as pl
import pytest

from recsys.data import dataset
from recsys.data.dataset import Dataset, DatasetError, DatasetManifest, build_dataset
from recsys.data.features import encode_examples
from recsys.data.generate import generate
from recsys.data.validate import validate
from recsys.schema import parse_schema


def _pipeline(tmp, cfg, schema, seed=None):
    gen = cfg.generator if seed is None else replace(cfg.generator, seed=seed)
    generate(gen, tmp / "raw", progress=False)
    validate(tmp / "raw", tmp / "validated", cfg.validation, cfg.ingest)
    return build_dataset(tmp / "validated", tmp / "datasets", schema, cfg.build, progress=False)


def test_same_seed_same_id_other_seed_or_config_new_id(tmp_path, tiny_cfg, schema, tiny_dataset):
    again, built = _pipeline(tmp_path / "a", tiny_cfg, schema)
    assert built and again.id == tiny_dataset.id
    for task in ("ranking", "retrieval"):
        assert again.read(task, "train").equals(tiny_dataset.read(task, "train"))
    other, _ = _pipeline(tmp_path / "b", tiny_cfg, schema, seed=tiny_cfg.generator.seed + 1)
    assert other.id != tiny_dataset.id
    more_shards, _ = build_dataset(tmp_path / "a" / "validated", tmp_path / "a" / "datasets", schema,
                                   replace(tiny_cfg.build, shards=3), progress=False)
    assert more_shards.id != again.id
    raw = schema.to_dict()
    raw["features"][4]["compute"]["event_types"] = ["view", "click"]
    other_schema, _ = build_dataset(tmp_path / "a" / "validated", tmp_path / "a" / "datasets",
                                    parse_schema(raw), tiny_cfg.build, progress=False)
    assert other_schema.id != again.id


def test_chunked_writing_changes_nothing(tmp_path, tiny_dataset, tiny_validated, tiny_cfg, schema, monkeypatch):
    """Examples are computed and written chunk by chunk; the chunk size is not part of the content."""
    chunks = []

    def counted(builder, rows, task):
        chunks.append(task)
        return encode_examples(builder, rows, task)

    monkeypatch.setattr(dataset, "encode_examples", counted)
    chunked, _ = build_dataset(tiny_validated, tmp_path, schema, replace(tiny_cfg.build, chunk_rows=1000),
                               progress=False)
    assert chunked.id == tiny_dataset.id
    train_rows = tiny_dataset.manifest.splits["ranking"]["train"]["rows"]
    assert chunks.count("ranking") > train_rows // 1000  # it really went a thousand rows at a time
    for task in ("ranking", "retrieval"):
        for split in ("train", "val", "test"):
            assert chunked.read(task, split).equals(tiny_dataset.read(task, split)), (task, split)
    assert chunked.manifest.profile == tiny_dataset.manifest.profile


def test_rebuilding_the_same_inputs_is_skipped(tiny_dataset, tiny_validated, tiny_cfg, schema):
    same, built = build_dataset(tiny_validated, tiny_dataset.path.parent, schema, tiny_cfg.build, progress=False)
    assert not built and same.path == tiny_dataset.path


def test_splits_are_by_time_and_shards_cover_them(tiny_dataset, tiny_cfg):
    m = tiny_dataset.manifest
    bounds = {k: pl.Series([v]).str.to_datetime(time_zone="UTC")[0] for k, v in m.splits["boundaries"].items()}
    for task in ("ranking", "retrieval"):
        frames = {s: tiny_dataset.read(task, s) for s in ("train", "val", "test")}
        assert frames["train"]["_timestamp"].max() < bounds["val_start"] <= frames["val"]["_timestamp"].min()
        assert frames["val"]["_timestamp"].max() < bounds["test_start"] <= frames["test"]["_timestamp"].min()
        for split, df in frames.items():
            shards = tiny_dataset.shards(task, split)
            assert len(shards) == tiny_cfg.build.shards
            rows = [pl.scan_parquet(p).select(pl.len()).collect().item() for p in shards]
            assert sum(rows) == df.height == m.splits[task][split]["rows"] > 0
            assert max(rows) - min(rows) <= 1  # balanced across workers
            assert df["_event_id"].is_unique().all()
    ranking = pl.concat([tiny_dataset.read("ranking", s) for s in ("train", "val", "test")])
    events = pl.read_parquet(tiny_dataset.manifest.sources["validated"]["events"]["path"])
    assert ranking.height == events.filter(pl.col("event_type") == "impression").height  # none lost


def test_manifest_round_trips_and_carries_lineage(tiny_dataset, schema, tiny_validated):
    path = tiny_dataset.path / "manifest.json"
    data = json.loads(path.read_text())
    manifest = DatasetManifest.from_dict(data)
    assert manifest.to_dict() == data
    assert manifest == Dataset.open(tiny_dataset.path).manifest
    assert manifest.schema_hash == schema.hash and manifest.schema == schema.to_dict()
    assert set(manifest.sources["validated"]) == {"events", "users", "items"}
    assert all(len(f["sha256"]) == 64 for files in manifest.sources["raw"].values() for f in files)
    prof = manifest.profile["ranking"]
    assert prof["click"]["kind"] == "label" and 0 < prof["click"]["mean"] < 0.5
    assert sum(prof["item_ctr"]["histogram"]["counts"]) == manifest.splits["ranking"]["train"]["rows"]
    assert prof["item_category"]["distinct"] > 1 and prof["user_history"]["mean_length"] > 0
    assert manifest.cardinalities["item_id"] == pl.read_parquet(tiny_validated / "items.parquet").height + 1
    assert manifest.validation["profile"]["events"]["rows"] > 0  # usable as a validation reference
    with pytest.raises(DatasetError, match="differ from the expected"):
        DatasetManifest.from_dict({**data, "extra": 1})


def test_a_dataset_of_another_schema_is_refused(tiny_dataset, schema):
    raw = schema.to_dict()
    raw["features"][0]["encoding"]["buckets"] = 17
    with pytest.raises(DatasetError, match=rf"built for feature schema {schema.hash}, but the schema is now"):
        Dataset.open(tiny_dataset.path, parse_schema(raw))
    with pytest.raises(DatasetError, match="not a dataset"):
        Dataset.open(tiny_dataset.path.parent)


def test_too_short_a_period_is_refused(tiny_validated, tmp_path, tiny_cfg, schema):
    with pytest.raises(DatasetError, match="leave no training period"):
        build_dataset(tiny_validated, tmp_path, schema, replace(tiny_cfg.build, val_days=10, test_days=15),
                      progress=False)
    assert list(tmp_path.iterdir()) == []
