"""XYZShopSmart: a synthetic shop whose behaviour a model can learn, with its ground truth saved.

The behaviour model (all of it in `ShopWorld`):

* Items belong to categories and brands and have a Zipf-distributed popularity. Every item and user
  has a unit-norm latent vector; an item's sits near its category's centroid, a user's near the
  centroids of two favourite categories. ``affinity = <user, item>``.
* Users visit in sessions (heavy-tailed activity). Each session shows recommendation lists
  (``slate_size`` impressions each, the shop's current policy: partly personalised, partly popular).
* An impression at ``position`` is clicked with probability
  ``sigmoid(affinity_scale * affinity + popularity_weight * log_popularity
  - position_decay * log2(1 + position) + click_bias)``; a click opens the product page (a view).
  Users also view items found by search / browsing (picked by affinity). Views lead to carts and
  carts to purchases by affinity.
* Drift: from ``drift.start_day`` on, users' latent vectors move towards new random tastes.

Events are generated in chunks of about ``chunk_events`` and written as they come, so memory stays
bounded at any size. The same seed gives byte-identical files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from recsys.config import GeneratorConfig
from recsys.events import EVENTS, ITEMS, USERS
from recsys.io import atomic_dir

COUNTRIES = ("US", "DE", "GB", "FR", "PL", "NL", "ES", "IT", "SE", "CA")
COUNTRY_P = (0.30, 0.16, 0.12, 0.10, 0.08, 0.07, 0.06, 0.05, 0.03, 0.03)
DEVICES = ("mobile", "desktop", "tablet")
DEVICE_P = (0.6, 0.32, 0.08)
SESSION_SECONDS = 1800
FOLLOW_UP_SECONDS = 1000  # longest impression -> click -> view -> cart -> purchase chain
US_PER_S = 1_000_000


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _draw(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    """n draws from the distribution with cumulative weights ``cdf`` (last value = total)."""
    return np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right").clip(max=len(cdf) - 1)


@dataclass
class GenerateSummary:
    out: Path
    n_events: int
    n_users: int
    n_items: int
    n_parts: int
    event_counts: dict[str, int]
    ctr: float
    seconds: float


class ShopWorld:
    """The latent world: users, items, their vectors and the click model. Deterministic by seed."""

    def __init__(self, cfg: GeneratorConfig):
        self.cfg = cfg
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0]))
        d, n_cat = cfg.latent_dim, cfg.n_categories
        self.start = datetime.fromisoformat(cfg.start_date).replace(tzinfo=UTC)
        self.start_s = int(self.start.timestamp())
        self.end_s = self.start_s + cfg.days * 86400

        # categories: centroids and a Zipf-ish share of the catalogue
        self.centroids = _unit(rng.normal(size=(n_cat, d)))
        cat_weight = 1.0 / np.arange(1, n_cat + 1) ** 0.7
        # items: category, brand (each category has its own brands), price, popularity, latent
        item_cat = rng.choice(n_cat, size=cfg.n_items, p=cat_weight / cat_weight.sum())
        order = np.argsort(item_cat, kind="stable")  # items grouped by category: ids follow that order
        self.item_cat = item_cat[order]
        brands_per_cat = max(1, cfg.n_brands // n_cat)
        self.item_brand = self.item_cat * brands_per_cat + rng.integers(0, brands_per_cat, cfg.n_items)
        cat_price_mu = rng.uniform(2.0, 5.5, n_cat)
        self.item_price = np.round(np.exp(rng.normal(cat_price_mu[self.item_cat], 0.45)), 2)
        self.item_available = rng.random(cfg.n_items) > 0.03
        rank = rng.permutation(cfg.n_items)
        popularity = 1.0 / (rank + 1.0) ** cfg.popularity_exponent
        self.popularity = popularity / popularity.sum()
        log_pop = np.log(self.popularity)
        self.log_pop = (log_pop - log_pop.mean()) / log_pop.std()  # centred, unit variance
        self.item_vec = _unit(self.centroids[self.item_cat] + 1.1 * rng.normal(size=(cfg.n_items, d)) / np.sqrt(d))
        self.pop_cdf = np.cumsum(self.popularity)
        cat_bounds = np.searchsorted(self.item_cat, np.arange(n_cat + 1))
        self.cat_lo, self.cat_hi = cat_bounds[:-1], cat_bounds[1:]
        self.cat_mass_lo = np.concatenate([[0.0], self.pop_cdf])[self.cat_lo]
        self.cat_mass_hi = np.concatenate([[0.0], self.pop_cdf])[self.cat_hi]

        # users: two favourite categories, activity, attributes
        n_users = cfg.n_users
        fav = rng.choice(n_cat, size=(n_users, 2), p=cat_weight / cat_weight.sum())
        noise = rng.normal(size=(n_users, d)) / np.sqrt(d)
        self.user_vec = _unit(self.centroids[fav[:, 0]] + 0.6 * self.centroids[fav[:, 1]] + 0.9 * noise)
        shifted_fav = rng.choice(n_cat, size=n_users)
        new_taste = _unit(self.centroids[shifted_fav] + 0.9 * rng.normal(size=(n_users, d)) / np.sqrt(d))
        s = cfg.drift.strength
        self.user_vec_shifted = _unit((1 - s) * self.user_vec + s * new_taste)
        activity = rng.lognormal(0.0, 1.0, n_users)
        self.activity_cdf = np.cumsum(activity / activity.sum())
        self.user_country = rng.choice(len(COUNTRIES), size=n_users, p=COUNTRY_P)
        self.user_device = rng.choice(len(DEVICES), size=n_users, p=DEVICE_P)
        signup_offset_days = rng.integers(-1000, max(1, cfg.days // 2), n_users)
        self.user_signup_s = self.start_s + signup_offset_days * 86400
        self.drift_s = None if cfg.drift.start_day is None else self.start_s + cfg.drift.start_day * 86400

    # ids in the shop's tables: 1-based (0 is nobody's id)
    @staticmethod
    def user_id(index: np.ndarray) -> np.ndarray:
        return index.astype(np.int64) + 1

    item_id = user_id

    def user_vectors(self, users: np.ndarray, when_s: np.ndarray) -> np.ndarray:
        """Each user's taste at a time (after the drift day it has shifted)."""
        if self.drift_s is None:
            return self.user_vec[users]
        shifted = (when_s >= self.drift_s)[:, None]
        return np.where(shifted, self.user_vec_shifted[users], self.user_vec[users])

    def affinity(self, users: np.ndarray, items: np.ndarray, when_s: np.ndarray) -> np.ndarray:
        return np.einsum("nd,nd->n", self.user_vectors(users, when_s), self.item_vec[items])

    def click_prob(self, affinity: np.ndarray, items: np.ndarray, position: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        logit = (cfg.affinity_scale * affinity + cfg.popularity_weight * self.log_pop[items]
                 - cfg.position_decay * np.log2(1.0 + position) + cfg.click_bias)
        return _sigmoid(logit)

    def cart_prob(self, view_affinity: np.ndarray) -> np.ndarray:
        """The chance that a view of an item with this affinity puts it in the cart."""
        return _sigmoid(3.0 * view_affinity + self.cfg.cart_bias - 1.0)

    def organic_views(self, rng: np.random.Generator, users: np.ndarray, when_s: np.ndarray) -> np.ndarray:
        """The item each of ``users`` views from search or browsing: the best liked of 30 popular candidates."""
        cand = _draw(rng, self.pop_cdf, len(users) * 30).reshape(-1, 30)
        cand_aff = np.einsum("nd,nkd->nk", self.user_vectors(users, when_s), self.item_vec[cand])
        pick = np.argmax(2 * self.cfg.affinity_scale * cand_aff + rng.gumbel(size=cand.shape), axis=1)
        return cand[np.arange(len(cand)), pick]

    def users_table(self) -> pl.DataFrame:
        n = self.cfg.n_users
        return pl.DataFrame({
            "user_id": self.user_id(np.arange(n)),
            "signup_date": (np.datetime64("1970-01-01") + (self.user_signup_s // 86400).astype("timedelta64[D]")),
            "country": np.array(COUNTRIES)[self.user_country],
            "device": np.array(DEVICES)[self.user_device],
        }, schema=USERS.schema)

    def items_table(self) -> pl.DataFrame:
        n = self.cfg.n_items
        return pl.DataFrame({
            "item_id": self.item_id(np.arange(n)),
            "category": [f"cat_{c:02d}" for c in self.item_cat],
            "brand": [f"brand_{b:03d}" for b in self.item_brand],
            "price": self.item_price,
            "available": self.item_available,
        }, schema=ITEMS.schema)

    def ground_truth_tables(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        users = pl.DataFrame({
            "user_id": self.user_id(np.arange(self.cfg.n_users)),
            "latent": self.user_vec.astype(np.float32),
            "latent_after_drift": self.user_vec_shifted.astype(np.float32),
        })
        items = pl.DataFrame({
            "item_id": self.item_id(np.arange(self.cfg.n_items)),
            "latent": self.item_vec.astype(np.float32),
            "log_popularity": self.log_pop,
        })
        return users, items


class _Counter:
    def __init__(self) -> None:
        self.next = 1

    def take(self, n: int) -> np.ndarray:
        ids = np.arange(self.next, self.next + n, dtype=np.int64)
        self.next += n
        return ids


def _expected_events_per_session(cfg: GeneratorConfig) -> float:
    impressions = cfg.requests_per_session * cfg.slate_size
    views = impressions * 0.07 + cfg.organic_views_per_session  # rough; only sizes the chunks
    return impressions + impressions * 0.07 + views * 1.2


def _chunk(world: ShopWorld, rng: np.random.Generator, n_sessions: int,
           ids: dict[str, _Counter]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Simulate ``n_sessions`` sessions: events (shop format) and the impressions' ground truth."""
    cfg = world.cfg
    users = _draw(rng, world.activity_cdf, n_sessions)
    lo = np.maximum(world.start_s, world.user_signup_s[users])
    last_start = world.end_s - SESSION_SECONDS - FOLLOW_UP_SECONDS  # every event lands before the end
    session_start = lo + (rng.random(n_sessions) * (last_start - lo)).astype(np.int64)
    session_id = ids["session"].take(n_sessions)

    # --- recommendation lists: slate_size slots, some personalised by category, some popular
    n_req = rng.poisson(cfg.requests_per_session, n_sessions)
    req_session = np.repeat(np.arange(n_sessions), n_req)
    r = len(req_session)
    req_user = users[req_session]
    req_time = session_start[req_session] + rng.integers(0, SESSION_SECONDS, r)
    k = cfg.slate_size
    taste = world.user_vectors(req_user, req_time)
    cat_logits = 4.0 * taste @ world.centroids.T  # (R, n_cat)
    cat_p = np.exp(cat_logits - cat_logits.max(axis=1, keepdims=True))
    cat_cdf = np.cumsum(cat_p, axis=1)
    u = rng.random((r, k)) * cat_cdf[:, -1:]
    cats = np.minimum((u[:, :, None] > cat_cdf[:, None, :]).sum(axis=2), cfg.n_categories - 1)  # (R, K)
    lo_m, hi_m = world.cat_mass_lo[cats], world.cat_mass_hi[cats]
    personal = np.searchsorted(world.pop_cdf, lo_m + rng.random((r, k)) * (hi_m - lo_m), side="right")
    popular = _draw(rng, world.pop_cdf, r * k).reshape(r, k)
    slate = np.where(rng.random((r, k)) < cfg.personalised_share, personal, popular).clip(max=cfg.n_items - 1)
    # a list never shows an item twice: redraw repeats from popularity, then drop what still repeats
    for _ in range(2):
        dup = _duplicates(slate)
        slate[dup] = _draw(rng, world.pop_cdf, int(dup.sum()))
    keep = ~_duplicates(slate)
    position = np.cumsum(keep, axis=1) - 1
    rows, _ = np.nonzero(keep)
    imp_item, imp_pos = slate[keep], position[keep]
    imp_req = ids["request"].take(r)[rows]
    imp_user, imp_session = req_user[rows], session_id[req_session][rows]
    imp_time = req_time[rows] * US_PER_S + imp_pos * 1000  # the list renders top to bottom
    imp_aff = world.affinity(imp_user, imp_item, req_time[rows])
    p_click = world.click_prob(imp_aff, imp_item, imp_pos)
    clicked = rng.random(len(p_click)) < p_click

    # --- clicks -> product views; organic views by affinity among popular candidates
    c = clicked
    click_time = imp_time[c] + rng.integers(1, 60, int(c.sum())) * US_PER_S
    n_org = rng.poisson(cfg.organic_views_per_session, n_sessions)
    org_session = np.repeat(np.arange(n_sessions), n_org)
    org_user = users[org_session]
    org_time_s = session_start[org_session] + rng.integers(0, SESSION_SECONDS, len(org_session))
    org_item = world.organic_views(rng, org_user, org_time_s)

    view_user = np.concatenate([imp_user[c], org_user])
    view_item = np.concatenate([imp_item[c], org_item])
    view_session = np.concatenate([imp_session[c], session_id[org_session]])
    view_time = np.concatenate([click_time + US_PER_S, org_time_s * US_PER_S])
    view_aff = world.affinity(view_user, view_item, view_time // US_PER_S)
    cart = rng.random(len(view_item)) < world.cart_prob(view_aff)
    cart_time = view_time[cart] + rng.integers(5, 300, int(cart.sum())) * US_PER_S
    buy = rng.random(int(cart.sum())) < cfg.purchase_prob
    buy_time = cart_time[buy] + rng.integers(10, 600, int(buy.sum())) * US_PER_S

    def part(kind: str, user, item, session, time_us, request=None, pos=None) -> dict[str, np.ndarray]:
        n = len(user)
        return {
            "timestamp": time_us, "user_id": world.user_id(user), "item_id": world.item_id(item),
            "event_type": np.full(n, kind), "session_id": session,
            "request_id": request if request is not None else np.full(n, -1),
            "position": pos if pos is not None else np.full(n, -1),
            "p_click": p_click if kind == "impression" else np.full(n, np.nan),
            "affinity": imp_aff if kind == "impression" else np.full(n, np.nan),
        }

    parts = [
        part("impression", imp_user, imp_item, imp_session, imp_time, imp_req, imp_pos),
        part("click", imp_user[c], imp_item[c], imp_session[c], click_time, imp_req[c], imp_pos[c]),
        part("view", view_user, view_item, view_session, view_time),
        part("add_to_cart", view_user[cart], view_item[cart], view_session[cart], cart_time),
        part("purchase", view_user[cart][buy], view_item[cart][buy], view_session[cart][buy], buy_time),
    ]
    cols = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    order = np.lexsort((cols["session_id"], cols["timestamp"]))
    cols = {key: v[order] for key, v in cols.items()}
    event_id = ids["event"].take(len(order))
    events = pl.DataFrame({
        "event_id": event_id,
        "timestamp": pl.Series(cols["timestamp"]).cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
        "user_id": cols["user_id"],
        "item_id": cols["item_id"],
        "event_type": cols["event_type"],
        "session_id": cols["session_id"],
        "request_id": cols["request_id"],
        "position": cols["position"].astype(np.int32),
    }).with_columns(
        pl.when(pl.col("request_id") >= 0).then(pl.col("request_id")),
        pl.when(pl.col("position") >= 0).then(pl.col("position")),
    )
    is_imp = cols["event_type"] == "impression"
    truth = pl.DataFrame({"event_id": event_id[is_imp], "p_click": cols["p_click"][is_imp],
                          "affinity": cols["affinity"][is_imp]})
    return events.select(EVENTS.names).cast({"event_type": pl.String}), truth


def _duplicates(slate: np.ndarray) -> np.ndarray:
    """Mask of slots whose item already appears earlier in the same row."""
    order = np.argsort(slate, axis=1, kind="stable")
    sorted_ = np.take_along_axis(slate, order, axis=1)
    repeat_sorted = np.zeros_like(slate, dtype=bool)
    repeat_sorted[:, 1:] = sorted_[:, 1:] == sorted_[:, :-1]
    mask = np.zeros_like(repeat_sorted)
    np.put_along_axis(mask, order, repeat_sorted, axis=1)
    return mask


def generate(cfg: GeneratorConfig, out: str | Path, progress: bool = True) -> GenerateSummary:
    """Write a shop export (events/, users.parquet, items.parquet) and its ground_truth/ to ``out``.

    The folder appears whole or not at all; an existing one is replaced.
    """
    started = datetime.now()
    out = Path(out)
    world = ShopWorld(cfg)
    per_session = _expected_events_per_session(cfg)
    sessions_per_chunk = max(1, int(cfg.chunk_events / per_session))
    ids = {"event": _Counter(), "session": _Counter(), "request": _Counter()}
    counts: dict[str, int] = {}
    n_events = n_parts = 0
    with atomic_dir(out) as tmp:
        (tmp / "events").mkdir()
        (tmp / "ground_truth" / "impressions").mkdir(parents=True)
        world.users_table().write_parquet(tmp / "users.parquet")
        world.items_table().write_parquet(tmp / "items.parquet")
        gt_users, gt_items = world.ground_truth_tables()
        gt_users.write_parquet(tmp / "ground_truth" / "users.parquet")
        gt_items.write_parquet(tmp / "ground_truth" / "items.parquet")
        bar = tqdm(total=cfg.target_events, unit="ev", unit_scale=True, desc="generate", disable=not progress)
        while n_events < cfg.target_events:
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1, n_parts]))
            remaining_sessions = int((cfg.target_events - n_events) / per_session) + 1
            events, truth = _chunk(world, rng, min(sessions_per_chunk, remaining_sessions), ids)
            name = f"part-{n_parts:05d}.parquet"
            events.write_parquet(tmp / "events" / name)
            truth.write_parquet(tmp / "ground_truth" / "impressions" / name)
            for kind, n in events["event_type"].value_counts().iter_rows():
                counts[kind] = counts.get(kind, 0) + n
            n_events += events.height
            n_parts += 1
            bar.update(events.height)
        bar.close()
        params = {
            "config": asdict(cfg),
            "start": world.start.isoformat(),
            "end": (world.start + timedelta(days=cfg.days)).isoformat(),
            "drift_at": None if world.drift_s is None else datetime.fromtimestamp(world.drift_s, UTC).isoformat(),
            "click_model": "sigmoid(affinity_scale*affinity + popularity_weight*log_popularity"
                           " - position_decay*log2(1+position) + click_bias)",
            "n_events": n_events,
        }
        (tmp / "ground_truth" / "params.json").write_text(json.dumps(params, indent=2))
    ctr = counts.get("click", 0) / max(1, counts.get("impression", 0))
    return GenerateSummary(out=out, n_events=n_events, n_users=cfg.n_users, n_items=cfg.n_items,
                           n_parts=n_parts, event_counts=counts, ctr=ctr,
                           seconds=(datetime.now() - started).total_seconds())
