"""Versioned datasets: Parquet shards per task and split, online lookup tables, and a manifest.

A dataset lives in ``<root>/<dataset_id>/``::

    manifest.json                   schema hash, sources and their hashes, splits, row counts, profile
    encoders.json                   vocabularies and bucket boundaries (shared by online encoding)
    shards/<task>/<split>/part-00000-of-00002.parquet
    online/users.parquet            latest user features and history, for serving
    online/items.parquet            latest item features, availability and category
    online/user_category.parquet    latest user x category features
    online/purchases.parquet        (user, item) pairs bought so far: serving's purchase filter
    online/ids_<column>.parquet     text user / item ids: each code's shop id (`recsys.ids`; none for integers)

The id is a content hash of the validated inputs, the schema and the build config: the same inputs
give the same id (and the build is skipped), any change gives a new one.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from polars.io.plugins import register_io_source
from tqdm.auto import tqdm

from recsys.config import EXECUTION_ONLY, BuildConfig
from recsys.data import logged_inputs
from recsys.data.attributes import attribute_tables
from recsys.data.encoders import Encoders, fit_encoders
from recsys.data.features import (
    EVENT_ID,
    TS,
    TYPE,
    FeatureBuilder,
    encode_examples,
    example_rows,
    implies_views,
    online_tables,
    retrieval_event_types,
    task_features,
    with_implied_views,
)
from recsys.data.profile import hash_collisions, profile_features
from recsys.errors import RecsysError
from recsys.hashing import file_sha256, stable_hash
from recsys.ids import MAPPED_IDS, IdMap
from recsys.io import atomic_dir
from recsys.schema import FeatureSchema, Kind

log = logging.getLogger(__name__)

PIPELINE_VERSION = 5  # bump when feature logic changes what a build writes (5: ranking examples name their request)
TASKS = ("ranking", "retrieval")
SPLITS = ("train", "val", "test")
VALIDATED_TABLES = ("events", "users", "items")


class DatasetError(RecsysError, ValueError):
    """A dataset cannot be built or opened; the message says why."""


@dataclass
class DatasetManifest:
    dataset_id: str
    created_at: str
    pipeline_version: int
    schema_hash: str
    schema: dict[str, Any]
    config: dict[str, Any]
    sources: dict[str, Any]
    validation: dict[str, Any]
    splits: dict[str, Any]
    cardinalities: dict[str, int]
    profile: dict[str, Any]
    online: dict[str, Any]
    # user and item tables as of the test period's start (what a model deployed then would see): the
    # inputs of retrieval evaluation against every item
    snapshots: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetManifest:
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise DatasetError(f"manifest keys {sorted(set(data) ^ names)} differ from the expected ones")
        return cls(**data)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str))

    @classmethod
    def read(cls, path: Path) -> DatasetManifest:
        return cls.from_dict(json.loads(path.read_text()))


@dataclass
class Dataset:
    path: Path
    manifest: DatasetManifest

    @classmethod
    def open(cls, path: str | Path, schema: FeatureSchema | None = None) -> Dataset:
        """Open a built dataset; with ``schema``, refuse one built for another schema."""
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not manifest_path.is_file():
            raise DatasetError(f"{path} is not a dataset (no manifest.json); build one with `recsys data build`")
        manifest = DatasetManifest.read(manifest_path)
        if schema is not None and manifest.schema_hash != schema.hash:
            raise DatasetError(f"dataset {manifest.dataset_id} was built for feature schema "
                               f"{manifest.schema_hash}, but the schema is now {schema.hash}; rebuild it")
        return cls(path, manifest)

    @property
    def id(self) -> str:
        return self.manifest.dataset_id

    def shards(self, task: str, split: str) -> list[Path]:
        return [self.path / s["path"] for s in self.manifest.splits[task][split]["shards"]]

    def read(self, task: str, split: str) -> pl.DataFrame:
        return pl.read_parquet(self.shards(task, split))

    def encoders(self, schema: FeatureSchema) -> Encoders:
        return Encoders.load(self.path / "encoders.json", schema)

    def online(self, name: str) -> pl.DataFrame:
        return pl.read_parquet(self.path / self.manifest.online[name]["path"])

    def at_test_start(self, name: str) -> pl.DataFrame:
        """The ``users`` or ``items`` table as of the test split's start."""
        return pl.read_parquet(self.path / self.manifest.snapshots["test_start"]["tables"][name]["path"])


def sorted_events(events: pl.DataFrame) -> pl.DataFrame:
    """Events in (timestamp, event_id) order; validated files already are, and are not sorted again."""
    ts, ids = pl.col(TS), pl.col(EVENT_ID)
    in_order = ((ts.diff() > 0) | (ts.diff() == 0) & (ids.diff() > 0)).all()
    if events.height < 2 or events.select(in_order).item():
        return events
    return events.sort(TS, EVENT_ID)


def split_boundaries(start: datetime, end: datetime, cfg: BuildConfig) -> dict[str, datetime]:
    """Time-based split: the last ``test_days`` whole days are test, the ``val_days`` before are val."""
    stop = datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1)
    test_start = stop - timedelta(days=cfg.test_days)
    val_start = test_start - timedelta(days=cfg.val_days)
    if val_start <= start:
        raise DatasetError(f"the events span {start:%Y-%m-%d} to {end:%Y-%m-%d}: val_days={cfg.val_days} and "
                           f"test_days={cfg.test_days} leave no training period")
    return {"train_start": start, "val_start": val_start, "test_start": test_start, "end": stop}


def dataset_id(schema: FeatureSchema, cfg: BuildConfig, inputs: dict[str, str]) -> str:
    content = {k: v for k, v in asdict(cfg).items() if k not in EXECUTION_ONLY}
    return "ds-" + stable_hash({"pipeline": PIPELINE_VERSION, "schema": schema.hash, "config": content,
                                "inputs": inputs})[:12]


def _fit_values(schema: FeatureSchema, users: pl.DataFrame, items: pl.DataFrame) -> dict[str, pl.Series]:
    """Raw values each vocabulary / bucketing is fitted on: the attribute tables and the catalogue."""
    values = {}
    for f in schema.features:
        if f.encoding not in ("vocab", "buckets"):
            continue
        if f.op == "attribute":
            table = users if f.params["table"] == "users" else items
            values[f.name] = table[f.params["column"]]
        elif f.kind == Kind.ITEM_ID:
            values[f.name] = items[f.params["column"]]
        elif f.kind == Kind.USER_ID:
            values[f.name] = users[f.params["column"]]
        else:
            raise DatasetError(f"feature {f.name!r}: {f.encoding} encoding needs an attribute or id op")
    return values


def load_builder(validated: Path, schema: FeatureSchema, encoders: Encoders | None = None) -> FeatureBuilder:
    """A feature builder over a validated export, with encoders fitted on its tables (or the given ``encoders``:
    another dataset's, to encode these events as a model trained on that dataset reads them)."""
    events = with_implied_views(sorted_events(pl.read_parquet(validated / "events.parquet")))
    if events.is_empty():
        raise DatasetError(f"{validated}: no valid events to build from")
    users, items, _ = attribute_tables(schema, pl.read_parquet(validated / "users.parquet"),
                                       pl.read_parquet(validated / "items.parquet"))
    if encoders is None:
        encoders = fit_encoders(schema, _fit_values(schema, users, items))
    return FeatureBuilder(schema, events, users, items, encoders)


def in_split(bounds: dict[str, datetime], split: str) -> pl.Expr:
    """Whether an example row (by its timestamp) belongs to ``split`` under the split boundaries ``bounds``."""
    ts = pl.col(TS)
    if split == "train":
        return ts < bounds["val_start"]
    if split == "val":
        return (ts >= bounds["val_start"]) & (ts < bounds["test_start"])
    if split == "test":
        return ts >= bounds["test_start"]
    raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


SHARD = "__shard"


def write_examples(builder: FeatureBuilder, task: str, bounds: dict[str, datetime], out: Path,
                   cfg: BuildConfig, logged: pl.DataFrame | None = None) -> dict[str, Any]:
    """Build ``task``'s examples and write ``out/shards/<task>/<split>/``; returns the splits' layout.
    With ``logged`` (`recsys.data.logged_inputs.prepare`), examples the app logged take their logged inputs.

    Row i of a split goes to shard i % n. Examples are computed ``cfg.chunk_rows`` at a time and
    streamed into the shard files by Polars' partitioned Parquet sink: memory holds one chunk, not the
    dataset. (`pl.PartitionBy` is marked unstable; polars is pinned, and the tests compare a chunked
    build with an unchunked one row for row.)
    """
    rows = example_rows(builder, task).collect()
    splits = {split: rows.filter(in_split(bounds, split)) for split in SPLITS}
    del rows
    schema = encode_examples(builder, splits["train"].head(0).lazy(), task).collect_schema()
    n = cfg.shards
    layout = {}
    for split, part in splits.items():
        rel = f"shards/{task}/{split}"
        from_logs = [0]  # examples that took logged inputs

        def encoded_chunks(with_columns, predicate, n_rows, batch_size, part=part, from_logs=from_logs):
            """A Polars IO source: the split's encoded examples, chunk by chunk, with their shard."""
            rows = part if n_rows is None else part.head(n_rows)
            for start in range(0, rows.height, cfg.chunk_rows):
                chunk = rows.slice(start, cfg.chunk_rows)
                df = encode_examples(builder, chunk.lazy(), task).collect()
                if logged is not None:
                    df, taken = logged_inputs.with_logged(df, logged)
                    from_logs[0] += taken
                df = df.with_columns(((pl.int_range(pl.len()) + start) % n).alias(SHARD))
                df = df if predicate is None else df.filter(predicate)
                yield df if with_columns is None else df.select(with_columns)

        def shard_file(args, rel=rel) -> str:
            if args.index_in_partition != 0:
                raise DatasetError(f"{rel}: the Parquet sink split a shard into several files")
            return f"part-{args.partition_keys[SHARD][0]:05d}-of-{n:05d}.parquet"

        (out / rel).mkdir(parents=True)
        if part.height:
            register_io_source(encoded_chunks, schema={**schema, SHARD: pl.Int64}).sink_parquet(pl.PartitionBy(
                out / rel, key=SHARD, include_key=False, file_path_provider=shard_file,
                approximate_bytes_per_file=None, max_rows_per_file=None))
        shards = []
        for k in range(n):
            path, size = f"{rel}/part-{k:05d}-of-{n:05d}.parquet", len(range(k, part.height, n))
            if size == 0:  # the sink writes no file for an empty shard
                pl.DataFrame(schema=schema).write_parquet(out / path)
            shards.append({"path": path, "rows": size})
        layout[split] = {"rows": part.height, "shards": shards}
        if logged is not None:
            layout[split]["from_logged_inputs"] = from_logs[0]
    return layout


def build_dataset(validated: str | Path, root: str | Path, schema: FeatureSchema, cfg: BuildConfig,
                  force: bool = False, progress: bool = True) -> tuple[Dataset, bool]:
    """Build (or reuse) the dataset version for ``validated`` (a `recsys data validate` output).

    Returns the dataset and whether it was built now (False: the same id existed already).
    """
    validated, root = Path(validated), Path(root)
    missing = [t for t in VALIDATED_TABLES if not (validated / f"{t}.parquet").is_file()]
    if missing or not (validated / "report.json").is_file():
        raise DatasetError(f"{validated} is not a validated export (missing {missing or ['report.json']}); "
                           "run `recsys data validate` first")
    if cfg.shards < 1:
        raise DatasetError(f"build.shards must be >= 1, got {cfg.shards}")
    inputs = {t: file_sha256(validated / f"{t}.parquet") for t in VALIDATED_TABLES}
    id_maps = {c: IdMap.path(validated, c) for c in MAPPED_IDS if IdMap.path(validated, c).is_file()}
    inputs |= {f"ids_{c}": file_sha256(path) for c, path in id_maps.items()}  # (none for integer ids: as before)
    logged_id = {"logged_inputs": logged_inputs.digest(list(cfg.logged_inputs))} if cfg.logged_inputs else {}
    ds_id = dataset_id(schema, cfg, inputs | logged_id)
    final = root / ds_id
    if (final / "manifest.json").is_file() and not force:
        return Dataset.open(final, schema), False

    report = json.loads((validated / "report.json").read_text())
    steps = tqdm(total=len(TASKS) + 2, desc=f"build {ds_id}", unit="step", disable=not progress)
    builder = load_builder(validated, schema)
    events, encoders = builder.events, builder.encoders
    bounds = split_boundaries(events[TS].min(), events[TS].max(), cfg)  # type: ignore[arg-type]
    logged, logged_account = None, None
    if cfg.logged_inputs and (rows := logged_inputs.read_logged(list(cfg.logged_inputs))) is not None:
        logged, logged_account = logged_inputs.prepare(rows, schema, encoders, root)
    steps.update(1)

    splits: dict[str, Any] = {"boundaries": {k: v.isoformat() for k, v in bounds.items()}}
    profile: dict[str, Any] = {}
    with atomic_dir(final) as tmp:
        for task in TASKS:
            steps.set_postfix_str(f"{task} examples")
            splits[task] = write_examples(builder, task, bounds, tmp, cfg, logged if task == "ranking" else None)
            if task == "ranking" and cfg.logged_inputs:
                splits[task]["logged_inputs"] = logged_account or {"rows": 0}
            if task == "retrieval":
                splits[task]["positive_event_types"] = positives = retrieval_event_types(events, schema)
                if positives != list(schema.examples["retrieval"]["event_types"]):
                    log.warning("retrieval: the events have none of examples.retrieval.event_types %s; the "
                                "positives are the implicit feedback they have: %s",
                                schema.examples["retrieval"]["event_types"], positives)
            train = pl.scan_parquet([tmp / s["path"] for s in splits[task]["train"]["shards"]])
            profile[task] = profile_features(train, task_features(schema, task))
            steps.update(1)
        steps.set_postfix_str("online tables")
        (tmp / "online").mkdir()
        online = {}
        as_of = events[TS].max() + timedelta(microseconds=1)  # type: ignore[operator]
        for name, lf in online_tables(builder, as_of).items():
            table = lf.collect(engine="streaming")
            table.write_parquet(tmp / "online" / f"{name}.parquet")
            online[name] = {"path": f"online/{name}.parquet", "rows": table.height}
        online["as_of"] = as_of.isoformat()
        for path in id_maps.values():  # serving takes and returns the shop's own ids
            shutil.copyfile(path, tmp / "online" / path.name)
        online["ids"] = report.get("ids", {})
        online["hashing"] = hash_collisions(builder)
        # the live store mirrors them: each click of such a log is also a view (`with_implied_views`)
        online["implied_views"] = implies_views(pl.read_parquet(validated / "events.parquet", columns=[TYPE]))
        steps.set_postfix_str("tables at the test start")
        (tmp / "snapshots" / "test_start").mkdir(parents=True)
        at_test = {}
        for name, lf in online_tables(builder, bounds["test_start"]).items():
            if name in ("users", "items"):
                path = f"snapshots/test_start/{name}.parquet"
                table = lf.collect(engine="streaming")
                table.write_parquet(tmp / path)
                at_test[name] = {"path": path, "rows": table.height}
        encoders.save(tmp / "encoders.json")
        manifest = DatasetManifest(
            dataset_id=ds_id,
            created_at=datetime.now(UTC).isoformat(),
            pipeline_version=PIPELINE_VERSION,
            schema_hash=schema.hash,
            schema=schema.to_dict(),
            config=asdict(cfg),
            sources={"validated": {t: {"path": str(validated / f"{t}.parquet"), "sha256": h}
                                   for t, h in inputs.items()},
                     "raw": {t: r["files"] for t, r in report["tables"].items()}},
            validation={"source": report["source"], "profile": report["profile"],
                        "tables": {t: {k: r[k] for k in ("rows", "good", "bad", "reasons")}
                                   for t, r in report["tables"].items()}},
            splits=splits,
            cardinalities={table: encoders.fitted[table].cardinality for table in schema.embedding_tables()},
            profile=profile,
            online=online,
            snapshots={"test_start": {"as_of": bounds["test_start"].isoformat(), "tables": at_test}},
        )
        manifest.write(tmp / "manifest.json")
        steps.update(1)
    steps.close()
    return Dataset(final, manifest), True
