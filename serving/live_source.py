"""A replica's live features: each request's user and candidates read from the store as of now and encoded with
the dataset of the model they go to (`recsys.online.live`), or, when the store is down or slow, nothing: the
caller then serves the dataset's snapshot features and flags the answer ``stale_features``.

A store that failed is left alone for ``retry_s`` (every request in that time goes straight to the snapshot instead
of waiting out a timeout), then tried again: recovery needs nobody.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import redis
from redis.exceptions import RedisClusterException

from recsys.data.state_spec import StateSpec
from recsys.export.signature import TensorSpec
from recsys.online.features import OnlineFeatures
from recsys.online.live import LiveFeatures
from recsys.serving_config import StoreConfig
from recsys.store.server import URL_ENV, client_for, store_url
from recsys.store.state import StateLayout, StateReader, UserState
from recsys.store.stream import EventStream

log = logging.getLogger(__name__)
FAILURES = (redis.RedisError, RedisClusterException, OSError)
WRITE_TIMEOUT_S = 2.0


class LiveSource:
    def __init__(self, cfg: StoreConfig, base: OnlineFeatures):
        url = cfg.url or os.environ.get(URL_ENV) or store_url(cfg.run_dir)
        client = client_for(url, socket_timeout=cfg.timeout_s, socket_connect_timeout=cfg.timeout_s)
        self.cfg = cfg
        # writes (/feedback, /events) wait longer than reads: with appendfsync always each one waits for a fsync
        self.events = EventStream(client_for(url, socket_timeout=WRITE_TIMEOUT_S,
                                             socket_connect_timeout=cfg.timeout_s), cfg.namespace)
        self.reader = StateReader(client, StateLayout(StateSpec.of(base.schema), cfg.namespace), cfg.clock)
        self.base = LiveFeatures(base, self.reader)
        self._by_dataset: dict[str, LiveFeatures] = {}
        self._down_until = 0.0
        self.last_error: str | None = None

    def features(self, online: OnlineFeatures) -> LiveFeatures:
        """The live features encoded for ``online``'s dataset (one per dataset the rollout names)."""
        if online is self.base.online:
            return self.base  # (most requests: no path to resolve)
        key = str(Path(online.dataset.path).resolve())
        if key not in self._by_dataset or self._by_dataset[key].online is not online:
            self._by_dataset[key] = LiveFeatures(online, self.reader)
        return self._by_dataset[key]

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.available:
            log.warning("the live store failed (%s): snapshot features for %.1f s", self.last_error, self.cfg.retry_s)
        self._down_until = time.monotonic() + self.cfg.retry_s

    def user(self, user_id: int) -> UserState | None:
        """The user's state as of now; None when the store is down or slow (serve the snapshot)."""
        if not self.available:
            return None
        try:
            return self.reader.user(user_id)
        except FAILURES as exc:
            self._failed(exc)
            return None

    def query_inputs(self, user: UserState, specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
        return self.base.query_inputs(user, specs)

    def ranking_inputs(self, online: OnlineFeatures, user: UserState, items: list[int],
                       specs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray] | None:
        """The candidates' inputs for a model trained on ``online``'s dataset; None when the store failed."""
        if not self.available:
            return None
        live = self.features(online)
        try:
            return live.ranking_inputs(user, items, specs)
        except FAILURES as exc:
            self._failed(exc)
            return None
