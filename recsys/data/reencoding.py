"""A dataset's events encoded again, with another dataset's encoders (model evaluation on a candidate's encoding,
the live store's bootstrap and replay): the validated export a dataset was built from, refused unless its tables
are the ones the build hashed, and its examples and tables recomputed from it."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl

from recsys.data.dataset import SPLITS, VALIDATED_TABLES, Dataset, DatasetError, in_split, load_builder
from recsys.data.encoders import Encoders
from recsys.data.features import FeatureBuilder, encode_examples, example_rows, online_tables
from recsys.hashing import file_sha256
from recsys.schema import PROJECT_ROOT, FeatureSchema


def validated_source(dataset: Dataset) -> Path:
    """The validated export ``dataset`` was built from, refused unless its tables are the ones the build hashed."""
    folders = set()
    for table in VALIDATED_TABLES:
        recorded = dataset.manifest.sources["validated"][table]
        path = Path(recorded["path"])
        if not path.is_absolute():  # built from a relative path: relative to where the build ran
            path = next((p for p in (Path.cwd() / path, PROJECT_ROOT / path) if p.is_file()), path)
        if not path.is_file():
            raise DatasetError(f"dataset {dataset.id} was built from {recorded['path']}, which is gone: its events "
                               "cannot be encoded again")
        if (digest := file_sha256(path)) != recorded["sha256"]:
            raise DatasetError(f"dataset {dataset.id} was built from {path} with sha256 {recorded['sha256']}, but "
                               f"that file now has sha256 {digest}: its events cannot be encoded again")
        folders.add(path.parent)
    if len(folders) != 1:
        raise DatasetError(f"dataset {dataset.id}: its validated tables lie in several folders {sorted(folders)}")
    return folders.pop()


def builder_with(dataset: Dataset, schema: FeatureSchema, encoders: Encoders) -> FeatureBuilder:
    """A feature builder over the events, users and items ``dataset`` was built from (the whole history, so every
    point-in-time feature is what the build computed), encoding with ``encoders`` (e.g. another dataset's)."""
    return load_builder(validated_source(dataset), schema, encoders)


def split_boundaries_of(dataset: Dataset) -> dict[str, datetime]:
    """The split boundaries ``dataset`` was built with."""
    return {k: datetime.fromisoformat(v) for k, v in dataset.manifest.splits["boundaries"].items()}


def encoded_split(builder: FeatureBuilder, dataset: Dataset, task: str, split: str) -> pl.DataFrame:
    """The examples of ``dataset``'s ``task`` / ``split`` (the same events, in event order) with ``builder``'s
    encoders; with the dataset's own builder these are its shards' rows."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    rows = example_rows(builder, task).filter(in_split(split_boundaries_of(dataset), split)).collect()
    step = max(int(dataset.manifest.config.get("chunk_rows") or rows.height), 1)
    chunks = [encode_examples(builder, rows.slice(start, step).lazy(), task).collect()
              for start in range(0, rows.height, step)]
    return pl.concat(chunks) if chunks else encode_examples(builder, rows.lazy(), task).collect()


def encoded_at_test_start(builder: FeatureBuilder, dataset: Dataset) -> dict[str, pl.DataFrame]:
    """The ``users`` and ``items`` tables as of ``dataset``'s test start (`Dataset.at_test_start`), encoded with
    ``builder``'s encoders."""
    tables = online_tables(builder, split_boundaries_of(dataset)["test_start"])
    return {name: tables[name].collect(engine="streaming") for name in ("users", "items")}
