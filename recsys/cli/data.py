"""``recsys data``: generate, validate, build and inspect datasets."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from recsys.config import DataConfig, load_config
from recsys.data.dataset import Dataset, DatasetError, build_dataset
from recsys.data.generate import generate
from recsys.data.validate import validate
from recsys.schema import DEFAULT_SCHEMA_PATH, PROJECT_ROOT, load_schema

DEFAULT_CONFIG = str(PROJECT_ROOT / "configs" / "data" / "default.yaml")
DEFAULT_RAW = "runs/data/raw/xyzshop"
DEFAULT_VALIDATED = "runs/data/validated/xyzshop"
DEFAULT_DATASETS = "runs/datasets"


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="data config YAML with generator, ingest, validation and build sections "
                        f"(default: {DEFAULT_CONFIG})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set generator.seed=3 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_parser(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="generate, validate, build and inspect datasets",
                               description="The data pipeline: shop events -> validated tables -> "
                                           "versioned feature shards.")
    sub = data.add_subparsers(dest="data_command", metavar="<step>", required=True)

    p = sub.add_parser("generate", help="write synthetic XYZShopSmart events in the shop export format",
                       description="Write a synthetic shop export (events/, users.parquet, items.parquet) "
                                   "and its ground truth (ground_truth/: latent vectors, true click "
                                   "probabilities). Deterministic by generator.seed; streams in chunks, so "
                                   "any size fits in memory (e.g. --set generator.target_events=50000000).")
    _config_args(p)
    p.add_argument("--out", default=DEFAULT_RAW, help=f"output folder, replaced if present (default: {DEFAULT_RAW})")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("init", help="read a sample of a shop's files and write a starter data config",
                       description="Guess how to read the shop files under --source: which file is the events log, "
                                   "the items and the users table, the column mapping, the timestamp format and "
                                   "the event names; write it as a data config with comments saying what it was "
                                   "unsure of, what is missing (and derived) and which schema features the data "
                                   "can feed. Then: recsys data validate --config OUT --source SOURCE.")
    p.add_argument("--source", required=True, help="the folder of the shop's files (CSV, Parquet or JSON lines)")
    p.add_argument("--out", default="recsys-data.yaml", help="where to write the config (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("validate", help="check an export, quarantine bad rows, write clean tables",
                       description="Read a shop export (Parquet, CSV or JSON lines; columns mapped by the "
                                   "config's ingest section), check its schema, rows and batch statistics, "
                                   "and write clean tables, quarantine/ (bad rows with reasons) and "
                                   "report.json/report.txt. A hard failure writes nothing.")
    _config_args(p)
    p.add_argument("--source", default=DEFAULT_RAW, help=f"the export's folder (default: {DEFAULT_RAW})")
    p.add_argument("--out", default=DEFAULT_VALIDATED, help=f"output folder (default: {DEFAULT_VALIDATED})")
    p.add_argument("--reference", default=None,
                   help="a previous report.json or dataset manifest.json to compare batch statistics with")
    p.add_argument("--feedback", action="append", default=[], metavar="EVENT_LOG",
                   help="also validate the serving app's feedback events under this event_log folder "
                        "(events/*.jsonl; repeatable)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("build", help="build the versioned feature dataset (shards + manifest + online tables)",
                       description="Compute point-in-time features with Polars, split by time, and write "
                                   "<root>/<dataset_id>/ with Parquet shards per task and split, online "
                                   "lookup tables and manifest.json. The id is a content hash: the same "
                                   "inputs and config reuse the existing dataset.")
    _config_args(p)
    p.add_argument("--validated", default=DEFAULT_VALIDATED,
                   help=f"output of `recsys data validate` (default: {DEFAULT_VALIDATED})")
    p.add_argument("--root", default=DEFAULT_DATASETS, help=f"datasets folder (default: {DEFAULT_DATASETS})")
    p.add_argument("--schema", default=str(DEFAULT_SCHEMA_PATH), help="feature schema YAML")
    p.add_argument("--force", action="store_true", help="rebuild even if the dataset id exists")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("show", help="summarise a dataset (or list all datasets)",
                       description="Print a dataset's manifest as a one-screen summary, or list the "
                                   "datasets under --root when no dataset is named.")
    p.add_argument("dataset", nargs="?", help="dataset id or folder")
    p.add_argument("--root", default=DEFAULT_DATASETS, help=f"datasets folder (default: {DEFAULT_DATASETS})")
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    p.set_defaults(func=cmd_show)


def cmd_generate(args: argparse.Namespace) -> int:
    cfg = load_config(DataConfig, args.config, args.overrides)
    s = generate(cfg.generator, args.out, progress=not args.quiet)
    print(f"\nXYZShopSmart export written to {s.out}  ({s.seconds:.1f}s)")
    print(f"  {s.n_events:,} events in {s.n_parts} part(s), {s.n_users:,} users, {s.n_items:,} items")
    for kind in ("impression", "click", "view", "add_to_cart", "purchase"):
        print(f"  {kind:<12} {s.event_counts.get(kind, 0):>12,}")
    print(f"  click-through rate {s.ctr:.2%}; ground truth in {s.out / 'ground_truth'}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from recsys.data.starter_config import InitError, render, starter_config

    out, source = Path(args.out), Path(args.source)
    if out.exists() and not args.force:
        raise InitError(f"{out} exists; choose another --out or pass --force to overwrite it")
    if not source.is_dir():
        raise InitError(f"--source {source}: not a folder")
    text = render(starter_config(source, load_schema()), source)
    out.write_text(text)
    print("\n".join(line for line in text.splitlines() if line.startswith("#")))
    print(f"\nwritten to {out}; next: recsys data validate --config {out} --source {source}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = load_config(DataConfig, args.config, args.overrides)
    started = time.perf_counter()
    from recsys.eventlog.feedback import FEEDBACK_INGEST

    report = validate(args.source, args.out, cfg.validation, cfg.ingest, reference=args.reference,
                      extra_events=[(log, FEEDBACK_INGEST) for log in args.feedback])
    print(report.summary())
    print(f"\nclean tables, quarantine/ and report.json written to {args.out}  "
          f"({time.perf_counter() - started:.1f}s)")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    cfg = load_config(DataConfig, args.config, args.overrides)
    schema = load_schema(args.schema)
    started = time.perf_counter()
    ds, built = build_dataset(args.validated, args.root, schema, cfg.build, force=args.force,
                              progress=not args.quiet)
    print(_summary(ds))
    verb = f"built in {time.perf_counter() - started:.1f}s" if built else "already built (same inputs and config)"
    print(f"\ndataset {ds.id} {verb}: {ds.path}")
    return 0


def _resolve(name: str, root: str) -> Path:
    for candidate in (Path(name), Path(root) / name):
        if (candidate / "manifest.json").is_file():
            return candidate
    raise DatasetError(f"no dataset {name!r} (looked for {name}/manifest.json and {root}/{name}/manifest.json)")


def cmd_show(args: argparse.Namespace) -> int:
    if args.dataset is None:
        found = sorted(p.parent for p in Path(args.root).glob("*/manifest.json"))
        if not found:
            print(f"no datasets under {args.root}; build one with `recsys data build`")
            return 0
        for path in found:
            m = Dataset.open(path).manifest
            rows = sum(m.splits["ranking"][s]["rows"] for s in ("train", "val", "test"))
            print(f"{m.dataset_id}  created {m.created_at[:19]}  schema {m.schema_hash}  "
                  f"{rows:,} ranking examples  {path}")
        return 0
    ds = Dataset.open(_resolve(args.dataset, args.root))
    print(json.dumps(ds.manifest.to_dict(), indent=2) if args.json else _summary(ds))
    return 0


def _summary(ds: Dataset) -> str:
    m = ds.manifest
    b = m.splits["boundaries"]
    lines = [f"dataset {m.dataset_id}   schema {m.schema_hash}   pipeline v{m.pipeline_version}",
             f"  train {b['train_start'][:10]} .. val {b['val_start'][:10]} .. test {b['test_start'][:10]} "
             f".. {b['end'][:10]}",
             f"  {'task':<10}{'train':>12}{'val':>12}{'test':>12}   shards/split"]
    for task in ("ranking", "retrieval"):
        s = m.splits[task]
        lines.append(f"  {task:<10}{s['train']['rows']:>12,}{s['val']['rows']:>12,}{s['test']['rows']:>12,}"
                     f"   {len(s['train']['shards'])}")
    label = next((p for p in m.profile["ranking"].values() if p["kind"] == "label"), None)
    if label and "mean" in label:
        lines.append(f"  ranking label rate (train) {label['mean']:.2%}")
    lines.append("  embedding tables: " + ", ".join(f"{k}={v:,}" for k, v in m.cardinalities.items()))
    lines.append("  online tables: " + ", ".join(f"{k} ({v['rows']:,} rows)" for k, v in m.online.items()
                                                if isinstance(v, dict) and "rows" in v)
                 + f", as of {m.online['as_of'][:19]}")
    text_ids = [c for c, kind in m.online.get("ids", {}).items() if kind == "text"]
    if text_ids:
        lines.append(f"  text ids (coded; serving takes and returns the shop's own): {', '.join(text_ids)}")
    for name, h in m.online.get("hashing", {}).items():
        lines.append(f"  {name}: {h['ids']:,} ids in {h['buckets']:,} hash buckets, {h['share_colliding']:.2%} of "
                     "them sharing a bucket")
    positives = m.splits["retrieval"].get("positive_event_types")
    if positives is not None:
        lines.append(f"  retrieval positives: {', '.join(positives) or 'none (no such events)'}")
    v = m.validation["tables"]
    lines.append("  validation: " + ", ".join(f"{t} {r['good']:,} good / {r['bad']:,} quarantined"
                                              for t, r in v.items()))
    return "\n".join(lines)
