"""Time ``feature_drift`` on synthetic live rows drawn from a dataset's reference profile.

    python scripts/bench_drift.py [--dataset runs/datasets/<id>] [--task ranking] [--rows 2000000] [--repeat 3]

Rows are drawn from the profile itself (categoricals from ``top`` plus the rest as other values, dense
features by inverse CDF through the quantiles, histories with the profiled empty share and mean length),
held in memory, then every feature is checked. Prints the time per run and rows/s of the best run.
Not a test: the figure depends on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsys.monitoring.drift import feature_drift  # noqa: E402
from recsys.schema import load_schema  # noqa: E402


def synthetic_live(profile: dict, rows: int, seed: int = 0, history_length: int = 20) -> pl.DataFrame:
    """Draw ``rows`` encoded examples from ``profile`` (numpy, vectorised per feature)."""
    rng = np.random.default_rng(seed)
    columns = {}
    for name, ref in profile.items():
        kind = ref["kind"]
        if kind == "categorical":
            keys = np.array([int(k) for k in ref["top"]], dtype=np.int64)
            shares = np.array(list(ref["top"].values()), dtype=np.float64)
            rest = max(0.0, 1.0 - shares.sum())
            bucket = rng.choice(len(keys) + 1, size=rows, p=np.append(shares, rest) / (shares.sum() + rest))
            n_other = max(1, ref["distinct"] - len(keys))
            pool = np.setdiff1d(np.arange(1, n_other + len(keys) + 1), keys)[:n_other]
            values = np.where(bucket < len(keys), keys[np.minimum(bucket, len(keys) - 1)],
                              pool[rng.integers(0, len(pool), rows)])
            columns[name] = pl.Series(name, values, dtype=pl.Int64)
        elif kind in ("dense", "label") and "quantiles" in ref:
            probs = np.array([int(k[1:]) / 100 for k in ref["quantiles"]])
            values = np.interp(rng.random(rows), probs, np.array(list(ref["quantiles"].values())))
            columns[name] = pl.Series(name, values.astype(np.float32))
        elif kind == "history":
            empty = rng.random(rows) < ref["empty_share"]
            mean_filled = ref["mean_length"] / max(1e-9, 1.0 - ref["empty_share"])
            length = np.clip(1 + rng.poisson(max(0.0, mean_filled - 1), rows), 1, history_length)
            length = np.where(empty, 0, length)
            items = rng.integers(1, 5000, (rows, history_length))
            items[np.arange(history_length)[None, :] >= length[:, None]] = 0  # (rows, history_length)
            columns[name] = pl.Series(name, items, dtype=pl.Array(pl.Int64, history_length))
    return pl.DataFrame(columns)


def _default_dataset() -> Path:
    manifests = sorted((ROOT / "runs" / "datasets").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not manifests:
        raise SystemExit("no dataset under runs/datasets: build one (./scripts/demo.sh) or pass --dataset")
    return manifests[-1].parent


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=None, help="dataset folder (default: the newest)")
    parser.add_argument("--task", default="ranking", choices=["ranking", "retrieval"])
    parser.add_argument("--rows", type=float, default=2e6, help="live rows (default 2M)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    dataset = args.dataset or _default_dataset()
    profile = json.loads((dataset / "manifest.json").read_text())["profile"][args.task]
    history = load_schema().history
    length = history[0].length if history else 20
    rows = int(args.rows)
    t0 = time.perf_counter()
    live = synthetic_live(profile, rows, history_length=length)
    print(f"{dataset.name} {args.task}: {rows:,} rows x {live.width} features drawn in "
          f"{time.perf_counter() - t0:.1f} s ({live.estimated_size('mb'):.0f} MB)")
    times = []
    for i in range(args.repeat):
        t0 = time.perf_counter()
        results = feature_drift(profile, live)
        times.append(time.perf_counter() - t0)
        print(f"run {i + 1}: {times[-1]:.2f} s, {sum(r.drifted for r in results)} of {len(results)} drifted")
    best = min(times)
    print(f"best {best:.2f} s = {rows / best:,.0f} rows/s ({pl.thread_pool_size()} Polars threads)")
    return {"seconds": best, "rows_per_s": rows / best}


if __name__ == "__main__":
    main()
