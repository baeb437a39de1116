#!/usr/bin/env python
"""The demo's last step: ask the running app for recommendations, show them next to what the users did, print
the evaluation table and a latency summary, and write a Markdown report with plots.

    python scripts/demo_report.py --url http://127.0.0.1:8000 --dataset runs/datasets/<id> \\
        --dlrm-run runs/train/<dlrm run> --two-tower-run runs/train/<two-tower run> --out runs/report
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from recsys.data.dataset import Dataset
from recsys.data.features import META_CATEGORY, META_ITEM, META_USER


def post(url: str, body: dict) -> tuple[dict, float]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    return answer, (time.perf_counter() - start) * 1000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--dlrm-run", required=True)
    p.add_argument("--two-tower-run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--requests", type=int, default=200, help="requests timed for the latency summary")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = Dataset.open(args.dataset)
    runs = {name: json.loads((Path(path) / "metrics.json").read_text())
            for name, path in (("dlrm", args.dlrm_run), ("two-tower", args.two_tower_run))}

    test = dataset.read("retrieval", "test").select(META_USER, META_ITEM)
    users = test[META_USER].unique(maintain_order=True).head(3).to_list()
    print("  recommendations (top 5) next to what the user viewed in the test week:")
    for user in users:
        answer, ms = post(f"{args.url}/recommend", {"user_id": int(user), "k": 5})
        items = [r["item_id"] for r in answer["items"]]
        viewed = test.filter(pl.col(META_USER) == user)[META_ITEM].to_list()
        flags = [k for k in ("cold_start", "degraded") if answer.get(k)]
        print(f"    user {user:>6}: {items}  ({ms:.0f} ms{', ' + ', '.join(flags) if flags else ''})")
        print(f"    {'':>11} viewed {viewed[:8]}{' …' if len(viewed) > 8 else ''}  hits: "
              f"{sorted(set(items) & set(viewed)) or 'none'}")

    live_shopper(args.url, dataset, users[0])

    all_users = test[META_USER].unique().to_list()
    latencies, stages = [], {}
    for i in range(args.requests):
        answer, ms = post(f"{args.url}/recommend", {"user_id": int(all_users[i % len(all_users)]), "k": 10})
        latencies.append(ms)
        for stage, value in (answer.get("timings_ms") or {}).items():
            stages.setdefault(stage, []).append(value)
    lat = np.array(latencies)
    print(f"  latency over {len(lat)} sequential requests: p50 {np.percentile(lat, 50):.1f} ms, "
          f"p95 {np.percentile(lat, 95):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms")
    if stages:
        print("  per stage (median ms): " + ", ".join(f"{k} {np.median(v):.1f}" for k, v in stages.items()))

    d, t = runs["dlrm"], runs["two-tower"]
    rows = [(f"DLRM test {metric.upper()}", d["metrics"][f"test/{metric}"], d["baselines"][f"popularity_{metric}"],
             d["baselines"].get(f"logistic_{metric}"), d["baselines"].get(f"oracle_{metric}"))
            for metric in ("auc", "gauc") if f"test/{metric}" in d["metrics"]]
    for k in (10, 50, 100):
        rows.append((f"two-tower recall@{k}", t["metrics"][f"test/recall@{k}"],
                     t["baselines"][f"popularity_recall@{k}"], None, t["baselines"].get(f"oracle_recall@{k}")))
    shown = lambda x: "" if x is None else f"{x:.4f}"  # noqa: E731
    table = ["| metric | model | popularity | logistic regression | oracle |", "|---|---|---|---|---|"]
    table += [f"| {name} | {m:.4f} | {pop:.4f} | {shown(lr)} | {shown(orc)} |" for name, m, pop, lr, orc in rows]
    print("  evaluation on the test split:")
    for name, m, pop, lr, orc in rows:
        print(f"    {name:<22} model {m:.4f}  popularity {pop:.4f}" + (f"  logistic {lr:.4f}" if lr else "")
              + (f"  oracle {orc:.4f}" if orc else ""))
    print(f"  W&B runs (offline, `wandb sync` them): {d['wandb_run']}, {t['wandb_run']}")

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    second = axes[0].twinx()  # the two losses live on different scales (BCE vs in-batch softmax)
    for ax, (name, run), colour in zip((axes[0], second), runs.items(), ("tab:blue", "tab:orange"), strict=True):
        ax.plot(range(1, len(run["epoch_losses"]) + 1), run["epoch_losses"], marker="o", color=colour, label=name)
        ax.set_ylabel(f"{name} loss", color=colour)
    axes[0].set(title="training loss per epoch", xlabel="epoch")
    labels = [r[0].replace("two-tower ", "") for r in rows]
    x = np.arange(len(rows))
    for offset, column, label in ((-0.3, 1, "model"), (-0.1, 2, "popularity"), (0.1, 3, "logistic regression"),
                                  (0.3, 4, "oracle")):
        axes[1].bar(x + offset, [r[column] or 0 for r in rows], width=0.2, label=label)
    axes[1].set_xticks(x, labels, rotation=15)
    axes[1].set(title="test metrics against the baselines")
    axes[1].legend()
    axes[2].hist(lat, bins=40)
    axes[2].set(title="/recommend latency (sequential)", xlabel="ms")
    fig.tight_layout()
    fig.savefig(out / "demo.png", dpi=110)
    (out / "report.md").write_text("\n".join([
        "# recsys demo report", "", f"Dataset `{dataset.id}`.", "", *table, "",
        f"/recommend latency over {len(lat)} sequential requests: p50 {np.percentile(lat, 50):.1f} ms, "
        f"p95 {np.percentile(lat, 95):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms.", "",
        "![training curves, metrics against baselines, latency](demo.png)", ""]))
    print(f"  report: {out / 'report.md'} (plots: {out / 'demo.png'})")
    return 0


def live_shopper(url: str, dataset: Dataset, user: int, views: int = 4, k: int = 10) -> None:
    """One shopper's list before and after they view a few items of the category their list shows least of (the
    live store: `POST /events`, then the same `/recommend`). The views are stamped just after the dataset's
    history ends, where the store's clock stands, so that everyone else's recency stays as it was."""
    items = dataset.online("items").select(META_ITEM, META_CATEGORY, "item_views_7d")
    category = dict(items.select(META_ITEM, META_CATEGORY).iter_rows())
    before, _ = post(f"{url}/recommend", {"user_id": int(user), "k": k})
    shown = [r["item_id"] for r in before["items"]]
    counts = items.group_by(META_CATEGORY).len().sort("len", descending=True).head(8)  # the larger categories
    target = min(counts[META_CATEGORY].to_list(), key=lambda c: sum(category[i] == c for i in shown))
    viewed = (items.filter((pl.col(META_CATEGORY) == target) & ~pl.col(META_ITEM).is_in(shown))
              .sort("item_views_7d", descending=True).head(views)[META_ITEM].to_list())
    at = datetime.fromisoformat(dataset.manifest.online["as_of"])
    body = {"events": [{"user_id": int(user), "item_id": int(i), "event_type": "view",
                        "timestamp": (at + timedelta(seconds=10 * (n + 1))).isoformat()} for n, i in enumerate(viewed)]}
    try:
        post(f"{url}/events", body)
    except urllib.error.HTTPError as exc:
        print(f"  (no live store: /events answered {exc.code}; run the app with store.enabled to see a list change)")
        return
    after = before
    for _ in range(50):  # the consumer applies an event within milliseconds; a safety limit only
        time.sleep(0.05)
        after, _ = post(f"{url}/recommend", {"user_id": int(user), "k": k})
        if [r["item_id"] for r in after["items"]] != shown:
            break
    share = lambda answer: sum(category[r["item_id"]] == target for r in answer["items"])  # noqa: E731
    print(f"  one shopper, live: user {user} views {len(viewed)} items of {target} ({viewed})")
    for name, answer in (("before", before), ("after", after)):
        print(f"    {name:>6}: {[(r['item_id'], category[r['item_id']]) for r in answer['items']]}  "
              f"({share(answer)} of {k} in {target})")


if __name__ == "__main__":
    sys.exit(main())
