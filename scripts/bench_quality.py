"""What shoppers would click: the live app's lists scored with the generated shop's own click model.

It asks a running app (`recsys serve`, or `./scripts/demo.sh --keep-serving`) for the top-``k`` list of
``--users`` known users and scores every list by its expected clicks under the generator's click model
(`recsys.evaluation.expected_clicks`: the users' true tastes, no coin flips), beside the same users' reference lists
(`recsys.evaluation.list_quality`: a bestseller list, the ceiling of what views reveal, the oracle, random items).
With ``--retrieval`` and ``--ranker`` (the exports the app serves) it also builds the same lists offline, as the app
does, and says how far apart the live and offline figures are.

It prints expected clicks per list, the share of the personalisation lift (bestseller -> oracle) each reaches, and
the variety of the lists (distinct items over all lists, the share of lists holding the most common item).

    python scripts/bench_quality.py --url http://127.0.0.1:8000 [--dataset runs/datasets/<id>] [--users 300] \\
        [--k 10] [--out runs/quality] [--retrieval <two-tower run>/export --ranker <dlrm run>/export/dlrm]

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

from recsys.data.dataset import Dataset
from recsys.evaluation import list_quality
from recsys.evaluation.expected_clicks import world_of
from recsys.online.features import OnlineFeatures
from recsys.online.ranking import OnnxRanker
from recsys.online.retrieval import QueryRetriever
from recsys.schema import load_schema
from recsys.training.job import newest_dataset

SERVED = "served by the app"


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
    p.add_argument("--retrieval", help="the retrieval export the app serves: also build the lists offline, as the "
                                       "app does, and say how far apart the two are (needs --ranker)")
    p.add_argument("--ranker", help="the ranker export the app serves (e.g. runs/train/<dlrm run>/export/dlrm)")
    p.add_argument("--candidates", type=int, default=100, help="candidates retrieved per list, as the app's "
                                                                "`candidates` (default 100)")
    args = p.parse_args(argv)

    schema = load_schema()
    dataset = Dataset.open(args.dataset or newest_dataset(), schema)
    world = world_of(dataset)
    if world is None:
        print(f"dataset {dataset.id} was not built from generated data (no ground_truth/ beside its export): "
              "there is no true click model to score lists with", file=sys.stderr)
        return 2
    features = OnlineFeatures(dataset, schema, args.k)
    users = list_quality.known_users(features, args.users, args.seed)
    served, degraded = served_lists(args.url, users, args.k)
    lists = {SERVED: served}
    if args.retrieval and args.ranker:
        lists[list_quality.BUILT], _ = list_quality.offline_lists(
            features, QueryRetriever(args.retrieval, schema.hash), OnnxRanker(args.ranker, schema.hash), users, args.k,
            args.candidates)
    lists.update(list_quality.reference_lists(world, dataset, features, users, args.k, args.seed))
    scores = list_quality.compare(world, users, lists)
    print(f"{len(users)} known users of dataset {dataset.id}, top-{args.k} lists ({degraded} answers degraded); "
          "expected clicks under the generator's click model:")
    print(list_quality.table(scores))
    by_name = {s.list: s for s in scores}
    if list_quality.BUILT in by_name:
        online, offline = by_name[SERVED].expected_clicks, by_name[list_quality.BUILT].expected_clicks
        print(f"served vs built offline: {online / offline - 1:+.2%} expected clicks "
              f"({float((served == lists[list_quality.BUILT]).all(axis=1).mean()):.0%} of the lists identical)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        rows = [s.to_dict() for s in scores]
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
            color=["tab:blue" if n in (SERVED, list_quality.BUILT) else "tab:gray" for n in names])
    ax.set_xlabel("expected clicks per list (generator's click model)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
