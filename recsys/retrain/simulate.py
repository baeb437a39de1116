"""Simulated shoppers on the live app (the drift scenario, `recsys.retrain.scenario`, sends them).

`Shoppers` are the generator's users (`recsys.data.generate.ShopWorld`, rebuilt from the data config's seed: the
same latent vectors as the export's ``ground_truth/``). Each visit asks the app for recommendations and feeds back
an impression per shown item and a click where the generator's own click model says so, on the user's true taste
(`shift` switches every user to the taste after the generator's preference shift). Users visit in proportion to the
generator's activity weights, as they do in the export.
"""

from __future__ import annotations

import httpx
import numpy as np

from recsys.data.generate import ShopWorld
from recsys.errors import RecsysError


def visit_weights(world: ShopWorld, known_users: set[int] | None = None) -> np.ndarray:
    """Each user's share of the visits: the generator's activity, only over ``known_users`` when given (the users the
    app has features for: new signups would be cold starts)."""
    weights = np.diff(np.concatenate([[0.0], world.activity_cdf]))
    if known_users is not None:
        weights = weights * np.isin(world.user_id(np.arange(len(weights))), list(known_users))
    return weights / weights.sum()


class Shoppers:
    def __init__(self, world: ShopWorld, client: httpx.Client, k: int = 10, seed: int = 0,
                 known_users: set[int] | None = None):
        self.world, self.client, self.k = world, client, k
        self.rng = np.random.default_rng(seed)
        self.taste = world.user_vec
        self.weights = visit_weights(world, known_users)
        self.requests_sent = 0  # /recommend calls made so far

    def shift(self) -> None:
        """Every user's taste moves to the one the generator gives them after its preference shift."""
        self.taste = self.world.user_vec_shifted

    def visit(self, user: int) -> tuple[str, int, int, float]:
        """One visit of user index ``user``: (variant that answered, impressions, clicks, expected clicks: the sum of
        the shown items' true click probabilities, what the list is worth to the user without the coin flips)."""
        user_id = int(self.world.user_id(np.array([user]))[0])
        r = self.client.post("/recommend", json={"user_id": user_id, "k": self.k})
        self.requests_sent += 1
        if r.status_code != 200:
            raise RecsysError(f"/recommend answered {r.status_code}: {r.text[:300]}")
        answer = r.json()
        items = np.array([s["item_id"] for s in answer["items"]], dtype=np.int64) - 1
        if not len(items):
            return answer["variant"], 0, 0, 0.0
        positions = np.arange(len(items))
        affinity = self.world.item_vec[items] @ self.taste[user]
        probability = self.world.click_prob(affinity, items, positions)
        clicked = self.rng.random(len(items)) < probability
        events = [{"item_id": int(i) + 1, "event_type": "impression", "position": int(p)}
                  for p, i in zip(positions, items, strict=True)]
        events += [{"item_id": int(i) + 1, "event_type": "click", "position": int(p)}
                   for p, i in zip(positions[clicked], items[clicked], strict=True)]
        r = self.client.post("/feedback", json={"request_id": answer["request_id"], "user_id": user_id,
                                                "events": events})
        if r.status_code != 200:
            raise RecsysError(f"/feedback answered {r.status_code}: {r.text[:300]}")
        return answer["variant"], len(items), int(clicked.sum()), float(probability.sum())

    def run(self, visits: int) -> list[tuple[int, str, int, int, float]]:
        """``visits`` visits by users drawn by activity: (user id, variant, impressions, clicks, expected clicks)."""
        out = []
        for user in self.rng.choice(len(self.weights), size=visits, p=self.weights):
            out.append((int(self.world.user_id(np.array([user]))[0]), *self.visit(int(user))))
        return out
