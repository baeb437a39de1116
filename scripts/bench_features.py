#!/usr/bin/env python
"""Benchmark the Polars feature build against the same job in plain pandas and an I/O floor.

On one set of generated, validated events it runs, each in its own child process (so peak memory is
the variant's own):

  polars    the library's example path of `recsys.data.dataset.build_dataset`: `load_builder` (read the
            events, fit the encoders), then `write_examples` for both tasks (build, split by time, write
            the shards). Left out (pandas does not do them either): hashing the inputs, the feature
            profile, the online tables and the manifest.
  pandas    the same job written plainly in pandas (scripts/pandas_features.py): merge_asof with
            ``by=`` and ``allow_exact_matches=False``, groupby cumsum / shift / ffill; it reuses the
            fitted encoders' JSON state but encodes with pandas / numpy. Shards are written as zstd
            Parquet like Polars' default.
  io-floor  read the events and write, per task and split, the same number of rows in the same number
            of shards, with no transformation: contiguous slices of the events frame, its columns
            repeated so a row has about the in-memory width of an encoded example.
  polars-full  (--full-build) the whole `build_dataset(force=True)`, for information only.

Wall time is measured inside the child around the work (not interpreter start or imports; with
--repeat, the fastest run counts); peak memory is the child's own peak RSS (VmHWM), reported raw and
as the increase over the RSS after imports.
Afterwards the Polars and pandas shards are compared (sorted by _timestamp, _event_id): integer,
timestamp and history columns must be equal, float32 columns within rtol=1e-5, atol=1e-6.

    .venv/bin/python scripts/bench_features.py --events 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandas_features as pdf
import polars as pl

from recsys.config import BuildConfig, GeneratorConfig, IngestConfig, ValidationConfig
from recsys.data.dataset import (
    SPLITS,
    TASKS,
    _fit_values,
    build_dataset,
    load_builder,
    split_boundaries,
    write_examples,
)
from recsys.data.encoders import fit_encoders
from recsys.data.features import META_EVENT_ID, META_TS, TS, task_features
from recsys.data.generate import generate
from recsys.data.validate import validate
from recsys.schema import load_schema

TARGETS = {"speedup": 4.0, "memory": 0.5, "floor": 2.5}  # pandas/polars time >=, polars/pandas peak <=, polars/floor <=
RTOL, ATOL = 1e-5, 1e-6
GIB = 1024**3


# ---- measuring --------------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


def current_rss() -> int:
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    """This process's own peak RSS. Not ru_maxrss: after fork + exec, Linux carries the parent's RSS at the
    fork into the child's ru_maxrss (the parent holds the generated data), so it would not be the child's."""
    return _status_kib("VmHWM") * 1024


class Stages:
    """Times named stages of a variant and prints each as it ends."""

    def __init__(self, variant: str):
        self.variant, self.seconds = variant, {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start
        print(f"    [{self.variant}] {name:<28} {self.seconds[name]:8.2f} s   peak RSS {peak_rss() / GIB:5.2f} GiB",
              flush=True)


def to_datetime(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(us))


def shard_path(root: Path, task: str, split: str, k: int, n: int) -> Path:
    return root / "shards" / task / split / f"part-{k:05d}-of-{n:05d}.parquet"


# ---- the variants (each runs in its own child process) ----------------------------------------------
def run_polars(data: Path, out: Path, stage: Stages) -> dict[str, Any]:
    schema, cfg = load_schema(), BuildConfig()
    with stage("read events + fit encoders"):
        builder = load_builder(data, schema)
        events = builder.events
        bounds = split_boundaries(events[TS].min(), events[TS].max(), cfg)  # type: ignore[arg-type]
    layout = {}
    for task in TASKS:
        with stage(f"{task} examples + shards"):
            splits = write_examples(builder, task, bounds, out, cfg)
        rows = {name: split["rows"] for name, split in splits.items()}
        sample = pl.read_parquet(out / splits["train"]["shards"][0]["path"], n_rows=100_000)
        layout[task] = {"rows": rows, "bytes": sample.estimated_size() / max(1, sample.height) * sum(rows.values())}
    (out / "layout.json").write_text(json.dumps(layout))  # row counts and width for the I/O floor
    return {}


def run_pandas(data: Path, out: Path, stage: Stages) -> dict[str, Any]:
    schema, cfg = load_schema(), BuildConfig()
    with stage("read + sort events"):
        events = pdf.read_events(data / "events.parquet")
        users, items = pd.read_parquet(data / "users.parquet"), pd.read_parquet(data / "items.parquet")
    with stage("load encoders"):
        bounds = split_boundaries(to_datetime(events[TS].min()), to_datetime(events[TS].max()), cfg)
        encoders = pdf.PandasEncoders(json.loads((data / "encoders.json").read_text()))
        builder = pdf.PandasFeatureBuilder(schema, events, users, items)
    for task in TASKS:
        with stage(f"{task} features"):
            df = pdf.build_examples(builder, encoders, task)
        with stage(f"{task} split + write"):
            ts = df[META_TS]
            parts = {"train": df[ts < bounds["val_start"]],
                     "val": df[(ts >= bounds["val_start"]) & (ts < bounds["test_start"])],
                     "test": df[ts >= bounds["test_start"]]}
            for name, part in parts.items():
                pdf.write_split(part, task_features(schema, task), out, f"shards/{task}/{name}", cfg.shards)
        del df, parts
    return {}


def run_io_floor(data: Path, out: Path, stage: Stages) -> dict[str, Any]:
    n_shards = BuildConfig().shards
    layout = json.loads((out.parent / "polars" / "layout.json").read_text())
    with stage("read events"):
        events = pl.read_parquet(data / "events.parquet")
    row_bytes = events.estimated_size() / events.height
    copies = {}
    for task, info in layout.items():
        with stage(f"{task} write"):
            copies[task] = max(1, round(info["bytes"] / sum(info["rows"].values()) / row_bytes))
            wide = pl.concat([events.select(pl.all().name.suffix(f"_{i}")) for i in range(copies[task])],
                             how="horizontal")
            start = 0
            for split, rows in info["rows"].items():
                assert start + rows <= wide.height, "more example rows than events"
                for k in range(n_shards):
                    size = len(range(k, rows, n_shards))  # as many rows as _write_split puts in shard k
                    path = shard_path(out, task, split, k, n_shards)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    wide.slice(start, size).write_parquet(path)
                    start += size
    return {"column_copies": copies}


def run_polars_full(data: Path, out: Path, stage: Stages) -> dict[str, Any]:
    with stage("build_dataset (full)"):
        build_dataset(data, out, load_schema(), BuildConfig(), force=True, progress=False)
    return {}


VARIANTS: dict[str, Callable[[Path, Path, Stages], dict[str, Any]]] = {
    "polars": run_polars, "pandas": run_pandas, "io-floor": run_io_floor, "polars-full": run_polars_full}


def child(variant: str, data: Path, out: Path, result: Path) -> None:
    """Entry point of a child process: run one variant and write its measurements to ``result``."""
    rss_start = current_rss()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    stage = Stages(variant)
    start = time.perf_counter()
    extra = VARIANTS[variant](data, out, stage)
    wall = time.perf_counter() - start
    written = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    result.write_text(json.dumps({"variant": variant, "wall_s": wall, "peak_rss": peak_rss(),
                                  "rss_after_imports": rss_start, "written_bytes": written,
                                  "stages_s": stage.seconds, **extra}))


# ---- the parent: data, children, comparison, report -------------------------------------------------
def prepare(args: argparse.Namespace, data: Path) -> None:
    """Generate and validate the events once (not timed), and save fitted encoders for the pandas run."""
    n = args.events
    gen = GeneratorConfig(seed=args.seed, target_events=n, n_users=max(20_000, n // 100), n_items=max(5_000, n // 400))
    marker = data / "generator.json"
    if args.reuse and marker.is_file() and json.loads(marker.read_text()) == asdict(gen):
        print(f"[data] reusing {data / 'validated'}", flush=True)
    else:
        start = time.perf_counter()
        print(f"[data] generating {n:,} events ({gen.n_users:,} users, {gen.n_items:,} items) ...", flush=True)
        generate(gen, data / "raw", progress=True)
        print("[data] validating ...", flush=True)
        validate(data / "raw", data / "validated", ValidationConfig(), IngestConfig())
        shutil.rmtree(data / "raw")
        marker.write_text(json.dumps(asdict(gen)))
        print(f"[data] ready in {time.perf_counter() - start:.1f} s", flush=True)
    validated = data / "validated"
    users, items = pl.read_parquet(validated / "users.parquet"), pl.read_parquet(validated / "items.parquet")
    schema = load_schema()
    fit_encoders(schema, _fit_values(schema, users, items)).save(validated / "encoders.json")


def run_child(variant: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Run ``variant`` --repeat times, each in a fresh process; keep the fastest run."""
    result = root / "results" / f"{variant}.json"
    result.parent.mkdir(exist_ok=True)
    runs = []
    for i in range(args.repeat):
        result.unlink(missing_ok=True)
        print(f"[run] {variant} ({i + 1}/{args.repeat}) ...", flush=True)
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--variant", variant, "--events",
                        str(args.events), "--workdir", str(args.workdir), "--seed", str(args.seed)], check=True)
        runs.append(json.loads(result.read_text()))
        print(f"[run] {variant}: {runs[-1]['wall_s']:.2f} s, peak RSS {runs[-1]['peak_rss'] / GIB:.2f} GiB",
              flush=True)
    best = min(runs, key=lambda r: r["wall_s"])
    best["rss_increase"] = best["peak_rss"] - best["rss_after_imports"]
    return {**best, "runs": [{k: r[k] for k in ("wall_s", "peak_rss")} for r in runs]}


def _first_difference(a: pl.DataFrame, b: pl.DataFrame, column: str) -> int | None:
    x, y = a[column], b[column]
    if x.dtype == pl.Float32:
        xn, yn = x.to_numpy().astype(np.float64), y.to_numpy().astype(np.float64)
        bad = ~np.isclose(xn, yn, rtol=RTOL, atol=ATOL, equal_nan=True)
    else:
        bad = x.ne_missing(y).to_numpy()
    return int(np.argmax(bad)) if bad.any() else None


def _as_lists(df: pl.DataFrame) -> pl.DataFrame:
    """Fixed-size arrays (Polars' histories) as lists (pandas writes lists): same values, one dtype."""
    return df.with_columns(pl.col(c).cast(pl.List(t.inner)) for c, t in df.schema.items() if isinstance(t, pl.Array))


def compare_outputs(polars_out: Path, pandas_out: Path, n_shards: int) -> int:
    """Assert the pandas shards equal the Polars ones; returns the number of rows compared."""
    rows = 0
    for task in TASKS:
        for split in SPLITS:
            for k in range(n_shards):
                where = f"{task}/{split} shard {k}"
                a, b = (_as_lists(pl.read_parquet(shard_path(root, task, split, k, n_shards)))
                        .sort(META_TS, META_EVENT_ID) for root in (polars_out, pandas_out))
                if a.schema != b.schema or a.height != b.height:
                    raise AssertionError(f"{where}: polars {a.height} rows {dict(a.schema)}\n"
                                         f"  differ from pandas {b.height} rows {dict(b.schema)}")
                for column in a.columns:
                    row = _first_difference(a, b, column)
                    if row is not None:
                        raise AssertionError(
                            f"{where}: column {column!r} differs first at row {row} (_event_id "
                            f"{a[META_EVENT_ID][row]}): polars {a[column][row]!r} vs pandas {b[column][row]!r}")
                rows += a.height
    return rows


def ratio_rows(res: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    if "pandas" in res:
        speedup = res["pandas"]["wall_s"] / res["polars"]["wall_s"]
        rows.append({"name": "pandas / polars wall time", "value": speedup, "target": f">= {TARGETS['speedup']}x",
                     "pass": speedup >= TARGETS["speedup"]})
        memory = res["polars"]["peak_rss"] / res["pandas"]["peak_rss"]
        increase = res["polars"]["rss_increase"] / res["pandas"]["rss_increase"]
        rows.append({"name": "polars / pandas peak RSS", "value": memory, "target": f"<= {TARGETS['memory']}x",
                     "pass": memory <= TARGETS["memory"], "note": f"increase over imports: {increase:.2f}x"})
    floor = res["polars"]["wall_s"] / res["io-floor"]["wall_s"]
    rows.append({"name": "polars / io-floor wall time", "value": floor, "target": f"<= {TARGETS['floor']}x",
                 "pass": floor <= TARGETS["floor"]})
    return rows


def report(args: argparse.Namespace, res: dict[str, dict[str, Any]], ratios: list[dict[str, Any]],
           compared: int | None) -> str:
    lines = [f"feature build benchmark: {args.events:,} target events, {os.cpu_count()} CPUs, "
             f"polars {pl.__version__}, pandas {pd.__version__}", "",
             f"{'variant':<12} {'wall s':>9} {'peak RSS GiB':>13} {'RSS increase GiB':>17} {'written MiB':>12}"]
    for name, r in res.items():
        lines.append(f"{name:<12} {r['wall_s']:>9.2f} {r['peak_rss'] / GIB:>13.2f} {r['rss_increase'] / GIB:>17.2f} "
                     f"{r['written_bytes'] / 2**20:>12.1f}")
    lines += ["", f"{'ratio':<30} {'value':>8} {'target':>9}  result"]
    for r in ratios:
        note = f"  ({r['note']})" if "note" in r else ""
        lines.append(f"{r['name']:<30} {r['value']:>7.2f}x {r['target']:>9}  {'PASS' if r['pass'] else 'MISS'}{note}")
    lines += ["", "stages (s):"]
    for name, r in res.items():
        lines.append(f"  {name:<12} " + ", ".join(f"{k} {v:.2f}" for k, v in r["stages_s"].items()))
    lines += ["", "identical output: " + (f"yes, {compared:,} example rows (polars vs pandas)" if compared is not None
                                          else "not checked (--skip-pandas)"),
              "polars = build_dataset's example path (load_builder, write_examples for both tasks);",
              "         no input hashing, profile, online tables or manifest (see polars-full with --full-build).",
              "io-floor = read events + write the same rows/shards, events columns repeated "
              f"{res['io-floor'].get('column_copies')} times to about the encoded row width."]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000,
                        help="events to generate (default 10M); users = max(20k, N/100), items = max(5k, N/400)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "recsys-bench-features",
                        help="where data and outputs go: <workdir>/events-<N>/ (default %(default)s)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse the validated events of an earlier run with the same N and seed")
    parser.add_argument("--seed", type=int, default=7, help="generator seed (default %(default)s)")
    parser.add_argument("--skip-pandas", action="store_true", help="run polars and io-floor only (no comparison)")
    parser.add_argument("--full-build", action="store_true",
                        help="also time the complete build_dataset (online tables, profile, manifest), for information")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per variant, each in a fresh process; the fastest is reported (default 1)")
    parser.add_argument("--json-out", type=Path, help="results JSON (default <workdir>/events-<N>/results.json)")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # child process
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = args.workdir / f"events-{args.events}"
    data, outputs = root / "validated", root / "out"
    if args.variant:
        child(args.variant, data, outputs / args.variant, root / "results" / f"{args.variant}.json")
        return 0

    prepare(args, root)
    variants = ["polars", *([] if args.skip_pandas else ["pandas"]), "io-floor",
                *(["polars-full"] if args.full_build else [])]
    res = {v: run_child(v, args, root) for v in variants}
    compared = None
    if not args.skip_pandas:
        print("[check] comparing polars and pandas shards ...", flush=True)
        compared = compare_outputs(outputs / "polars", outputs / "pandas", BuildConfig().shards)
    ratios = ratio_rows(res)
    print("\n" + report(args, res, ratios, compared))
    json_out = args.json_out or root / "results.json"
    json_out.write_text(json.dumps({
        "events_target": args.events, "events": pl.scan_parquet(data / "events.parquet").select(pl.len()).collect()
        .item(), "cpus": os.cpu_count(), "python": platform.python_version(), "polars": pl.__version__,
        "pandas": pd.__version__, "variants": res, "ratios": ratios, "targets": TARGETS,
        "identical_rows_compared": compared}, indent=2))
    print(f"\nresults written to {json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
