"""The lists shoppers would see, scored: a model's top-k lists beside the reference lists of the same users, each by
its expected clicks under a generated shop's click model (`recsys.evaluation.expected_clicks`) and by its variety.

The reference lists (every one restricted to the items serving may show):

- a bestseller list: serving's cold-start list (the most viewed available items), the same for everyone;
- the ceiling of what views reveal: each user's taste estimated from the true vectors of the items they viewed (the
  mean, or its direction shrunk by how few views back it, whichever lists expect the most clicks for these users),
  then the best items for it: a model that had learnt every item perfectly could do about this much;
- the oracle: each user's best items under their true taste;
- random items.

`offline_lists` builds a model's lists the way the serving app does (`serving.app`: online features → query tower
and ANN index → filter → ranker's ONNX graph → top k), without a server; `scripts/bench_quality.py` asks the live
app for them instead. Both report through `compare`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
from tqdm import tqdm

from recsys.data.dataset import Dataset
from recsys.data.features import META_ITEM, META_USER
from recsys.data.generate import ShopWorld
from recsys.evaluation.expected_clicks import best_of, expected_clicks, oracle_lists, view_ceiling_lists, world_of
from recsys.evaluation.lists import list_coverage
from recsys.online.features import OnlineFeatures, model_inputs
from recsys.online.ranking import OnnxRanker
from recsys.online.retrieval import QueryRetriever
from recsys.schema import FeatureSchema

BESTSELLER = "bestseller list (the app's cold start)"
CEILING = "ceiling: taste from viewed items"
ORACLE = "oracle: true taste"
RANDOM = "random available items"
BUILT = "built offline as serving does"
CANDIDATES_RANKED = "its candidates perfectly ranked"


@dataclass(frozen=True)
class ListScore:
    """One kind of list over the same users."""

    list: str
    expected_clicks: float  # mean over the users
    lift_share: float  # (clicks - bestseller's) / (oracle's - bestseller's)
    distinct_items: int  # over all the users' lists
    top_item_share: float  # share of the lists holding the most common item

    def to_dict(self) -> dict:
        return asdict(self)


def known_users(features: OnlineFeatures, n: int, seed: int) -> np.ndarray:
    """``n`` users of the dataset's online table, drawn with ``seed``, sorted (shop ids)."""
    known = features.users[META_USER].to_numpy()
    return np.sort(np.random.default_rng(seed).choice(known, min(n, len(known)), replace=False))


def reference_lists(world: ShopWorld, dataset: Dataset, features: OnlineFeatures, users: np.ndarray, k: int,
                    seed: int) -> dict[str, np.ndarray]:
    """The reference lists of ``users`` (name -> (n, k) shop item ids)."""
    allowed = features.items.filter(features.available)[META_ITEM].to_numpy()
    views = pl.concat([dataset.read("retrieval", split).select(META_USER, META_ITEM) for split in ("train", "val")])
    rng = np.random.default_rng(seed + 1)
    return {
        BESTSELLER: np.tile(np.array(features.popular[:k]), (len(users), 1)),
        CEILING: view_ceiling_lists(world, views, META_USER, META_ITEM, users, k, allowed)[0],
        ORACLE: oracle_lists(world, users, k, allowed=allowed),
        RANDOM: np.stack([rng.choice(allowed, k, replace=False) for _ in users]),
    }


def compare(world: ShopWorld, users: np.ndarray, lists: dict[str, np.ndarray]) -> list[ListScore]:
    """Every list's score; ``lists`` must hold the bestseller and oracle lists (the lift is measured between them)."""
    clicks = {name: expected_clicks(world, users, found).mean() for name, found in lists.items()}
    popular, oracle = clicks[BESTSELLER], clicks[ORACLE]
    scores = []
    for name, found in lists.items():
        cover = list_coverage(row[row > 0] for row in found)
        scores.append(ListScore(name, float(clicks[name]), float((clicks[name] - popular) / (oracle - popular)),
                                cover.distinct_items, cover.top_item_share))
    return scores


def table(scores: list[ListScore]) -> str:
    lines = [f"  {'list':<40} {'clicks/list':>11} {'of the lift':>11} {'items':>6} {'top item in':>11}"]
    lines += [f"  {s.list:<40} {s.expected_clicks:>11.3f} {s.lift_share:>11.0%} {s.distinct_items:>6} "
              f"{s.top_item_share:>11.0%}" for s in scores]
    return "\n".join(lines)


def offline_lists(features: OnlineFeatures, retriever: QueryRetriever, ranker: OnnxRanker, users: np.ndarray,
                  k: int, candidates: int, batch: int = 64, progress: bool = False) -> tuple[np.ndarray, list]:
    """(n, k) each user's list as the serving app builds it (0 for an empty slot), and the candidates each was
    ranked from (for the best list retrieval allows). The users must be known to ``features``."""
    specs = model_inputs(features.schema, "dlrm")
    query_specs = model_inputs(features.schema, "two_tower.user")
    lists = np.zeros((len(users), k), dtype=np.int64)
    ranked_from: list[list[int]] = []
    for lo in tqdm(range(0, len(users), batch), desc="lists", unit="batch", disable=not progress):
        rows = [features.user(int(u)) for u in users[lo : lo + batch]]
        if any(r is None for r in rows):
            raise ValueError(f"user {users[lo + rows.index(None)]} is not in dataset {features.dataset.id}")
        found = retriever.search([features.query_inputs(r, query_specs) for r in rows], candidates)
        for n, (row, items) in enumerate(zip(rows, found, strict=True)):
            kept = features.to_rank(row.user_id, items, set(), k)
            scores = ranker.scores(features.ranking_inputs(row, kept, specs))
            best = [kept[i] for i in np.argsort(-scores, kind="stable")[:k]]
            lists[lo + n, : len(best)] = best
            ranked_from.append(kept)
    return lists, ranked_from


def evaluate_exports(dataset: Dataset, schema: FeatureSchema, retrieval_export: str, ranker_export: str,
                     users: int = 300, k: int = 10, candidates: int = 100, seed: int = 0,
                     progress: bool = False) -> tuple[np.ndarray, list[ListScore]] | None:
    """A retrieval export and a ranker export's lists for ``users`` known users of a generated ``dataset``, scored
    beside the reference lists and beside the best list their own candidates allow (how much retrieval loses);
    None for a dataset of a real shop (no click model to score with). Serving's defaults: 100 candidates."""
    world = world_of(dataset)
    if world is None:
        return None
    features = OnlineFeatures(dataset, schema, k)
    who = known_users(features, users, seed)
    retriever = QueryRetriever(retrieval_export, schema.hash)
    built, ranked_from = offline_lists(features, retriever, OnnxRanker(ranker_export, schema.hash), who, k,
                                       candidates, progress=progress)
    lists = {BUILT: built, CANDIDATES_RANKED: best_of(world, who, ranked_from, k),
             **reference_lists(world, dataset, features, who, k, seed)}
    return who, compare(world, who, lists)
