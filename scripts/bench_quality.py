"""What shoppers would click: the live app's lists scored with the generated shop's own click model.

It asks a running app (`recsys serve`, or `./scripts/demo.sh --keep-serving`) for the top-``k`` list of
``--users`` known users and scores every list by its expected clicks under the generator's click model
(`recsys.evaluation.expected_clicks`: the users' true tastes, no coin flips). Beside it, the same users' lists from:

- a bestseller list: the app's own cold-start list (the most viewed available items), the same for everyone;
- the ceiling of what views reveal: each user's taste estimated as the mean true vector of the items they viewed,
  then the best items for it (a model that had learnt every item perfectly could do this much);
- the oracle: each user's best available items under their true taste;
- random available items.

It prints expected clicks per list, the share of the personalisation lift (bestseller -> oracle) each reaches, and
the variety of the lists (distinct items over all lists, the share of lists holding the most common item).

    python scripts/bench_quality.py --url http://127.0.0.1:8000 [--dataset runs/datasets/<id>] [--users 300] \\
        [--k 10] [--out runs/quality]

The dataset must be the one the app serves and built from generated data (its ``ground_truth/``).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import polars as pl

from recsys.data.dataset import Dataset
from recsys.data.features import META_ITEM, META_USER
from recsys.evaluation.expected_clicks import best_lists, expected_clicks, oracle_lists, taste_from_views, world_of
from recsys.evaluation.lists import list_coverage
from recsys.schema import load_schema
from recsys.training.job import newest_dataset
from serving.features import OnlineFeatures


def served_lists(url: str, users: np.ndarray, k: int, threads: int = 4) -> tuple[np.ndarray, int]:
    """(n, k) the app's lists (0 where it returned fewer than k) and how many answers were degraded."""
    with httpx.Client(base_url=url, trust_env=False, timeout=60.0) as client:
        def ask(user: int) -> dict:
            r = client.post("/recommend", json={"user_id": int(user), "k": k})
            r.raise_for_status()
            return r.json()

        with ThreadPoolExecutor(threads) as pool:
            answers = list(pool.map(ask, users))
    lists = np.zeros((len(users), k), dtype=np.int64)
    for row, answer in enumerate(answers):
        items = [int(item["item_id"]) for item in answer["items"]][:k]
        lists[row, :len(items)] = items
    return lists, sum(bool(a["degraded"]) for a in answers)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--url", required=True, help="the running app, e.g. http://127.0.0.1:8000")
    p.add_argument("--dataset", help="the dataset the app serves (default: the newest under runs/datasets)")
    p.add_argument("--users", type=int, default=300, help="how many known users to ask for (default 300)")
    p.add_argument("--k", type=int, default=10, help="list length (default 10)")
    p.add_argument("--seed", type=int, default=0, help="which users are drawn")
    p.add_argument("--out", type=Path, help="a folder for quality.json and quality.png")
    args = p.parse_args(argv)

    schema = load_schema()
    dataset = Dataset.open(args.dataset or newest_dataset(), schema)
    world = world_of(dataset)
    if world is None:
        print(f"dataset {dataset.id} was not built from generated data (no ground_truth/ beside its export): "
              "there is no true click model to score lists with", file=sys.stderr)
        return 2
    features = OnlineFeatures(dataset, schema, args.k)
    known = features.users[META_USER].to_numpy()
    users = np.sort(np.random.default_rng(args.seed).choice(known, min(args.users, len(known)), replace=False))
    allowed = features.items.filter(features.available)[META_ITEM].to_numpy()
    views = pl.concat([dataset.read("retrieval", split).select(META_USER, META_ITEM) for split in ("train", "val")])

    served, degraded = served_lists(args.url, users, args.k)
    rng = np.random.default_rng(args.seed + 1)
    lists = {
        "served by the app": served,
        "bestseller list (the app's cold start)": np.tile(np.array(features.popular[:args.k]), (len(users), 1)),
        "ceiling: taste from viewed items": best_lists(
            world, taste_from_views(world, views, META_USER, META_ITEM)[users - 1], args.k, allowed),
        "oracle: true taste": oracle_lists(world, users, args.k, allowed=allowed),
        "random available items": np.stack([rng.choice(allowed, args.k, replace=False) for _ in users]),
    }
    clicks = {name: expected_clicks(world, users, found) for name, found in lists.items()}
    popular, oracle = (clicks[n].mean() for n in ("bestseller list (the app's cold start)", "oracle: true taste"))
    rows = []
    for name, found in lists.items():
        cover = list_coverage(row[row > 0] for row in found)
        rows.append({"list": name, "expected_clicks": float(clicks[name].mean()),
                     "lift_share": float((clicks[name].mean() - popular) / (oracle - popular)),
                     "distinct_items": cover.distinct_items, "top_item_share": cover.top_item_share})
    print(f"{len(users)} known users of dataset {dataset.id}, top-{args.k} lists ({degraded} answers degraded); "
          "expected clicks under the generator's click model:")
    print(f"  {'list':<40} {'clicks/list':>11} {'of the lift':>11} {'items':>6} {'top item in':>11}")
    for r in rows:
        print(f"  {r['list']:<40} {r['expected_clicks']:>11.3f} {r['lift_share']:>11.0%} {r['distinct_items']:>6} "
              f"{r['top_item_share']:>11.0%}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "quality.json").write_text(json.dumps(
            {"dataset": dataset.id, "users": len(users), "k": args.k, "degraded": degraded, "lists": rows}, indent=2))
        print(f"written: {args.out / 'quality.json'}, {plot(rows, args.out / 'quality.png')}")
    return 0


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    names = [r["list"] for r in rows][::-1]
    ax.barh(names, [r["expected_clicks"] for r in rows][::-1],
            color=["tab:blue" if n.startswith("served") else "tab:gray" for n in names])
    ax.set_xlabel("expected clicks per list (generator's click model)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
