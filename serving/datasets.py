"""The online features of each dataset a served model was trained on.

A retrained ranker comes with its own dataset (refitted vocabularies, fresher user features); the rollout state
names each variant's. `FeaturesByDataset` loads a dataset's `OnlineFeatures` when a variant first names it and
drops it once no variant does (a replica that lives through many retraining cycles holds at most the datasets the
current rollout names, plus its own). A dataset that fails to load is not forgotten as "missing": its error is kept
and reported with every request that needed it, and the load is tried again after ``retry_s``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recsys.data.dataset import Dataset
from recsys.errors import RecsysError
from recsys.export.signature import TensorSpec
from recsys.online.features import OnlineFeatures
from recsys.store.state import UserState

if TYPE_CHECKING:
    from serving.live_source import LiveSource

log = logging.getLogger(__name__)


class DatasetUnavailable(RecsysError):
    """A dataset a variant ranks with could not be loaded; the message says why."""


class FeaturesByDataset:
    def __init__(self, base: OnlineFeatures, retry_s: float = 30.0):
        self.base = base
        self.retry_s = retry_s
        self._base_key = self._key(str(base.dataset.path))
        self._loaded: dict[str, OnlineFeatures] = {self._base_key: base}
        self._failed: dict[str, tuple[str, float]] = {}  # key -> (why, when it failed)

    @staticmethod
    def _key(path: str) -> str:
        return str(Path(path).resolve())

    def keep_only(self, paths: Iterable[str | None]) -> None:
        """Drop every loaded dataset but the base and ``paths`` (those the rollout names now)."""
        keep = {self._base_key} | {self._key(p) for p in paths if p}
        for key in [k for k in self._loaded if k not in keep]:
            del self._loaded[key]
            log.info("dropped the online features of dataset %s (no variant ranks with it any more)", key)
        for key in [k for k in self._failed if k not in keep]:
            del self._failed[key]

    @property
    def loaded(self) -> list[str]:
        return sorted(self._loaded)

    def get(self, path: str | None) -> OnlineFeatures:
        """The features of the dataset at ``path`` (the base's when None); `DatasetUnavailable` if it cannot be
        loaded (tried again ``retry_s`` after a failure)."""
        if not path:
            return self.base
        key = self._key(path)
        if key in self._loaded:
            return self._loaded[key]
        if key in self._failed and time.monotonic() - self._failed[key][1] < self.retry_s:
            raise DatasetUnavailable(self._failed[key][0])
        try:  # once per dataset: a short pause of the replica (its popular items are not used: cold start and
            # retrieval stay on the base dataset)
            features = OnlineFeatures(Dataset.open(key, self.base.schema), self.base.schema,
                                      max(1, len(self.base.popular)))
        except Exception as exc:
            why = f"dataset {key} could not be loaded: {exc}"
            log.error("%s (retried in %.0f s)", why, self.retry_s)
            self._failed[key] = (why, time.monotonic())
            raise DatasetUnavailable(why) from exc
        self._failed.pop(key, None)
        self._loaded[key] = features
        return features

    def ranking_inputs(self, path: str | None, user_id: int, items: list[int], specs: tuple[TensorSpec, ...],
                       live: LiveSource | None = None, live_user: UserState | None = None
                       ) -> tuple[dict[str, np.ndarray], str, bool] | None:
        """(inputs, dataset id, stale) from the dataset at ``path``: live features when ``live_user`` was read
        (stale: the store failed since, so the snapshot's), else the snapshot's; None if the snapshot lacks the
        user, or (another dataset than the base, which serves the candidates) the dataset lacks an item. Raises
        `DatasetUnavailable`."""
        features = self.get(path)
        if features is not self.base and not all(map(features.known_item, items)):
            return None
        if live is not None and live_user is not None:
            inputs = live.ranking_inputs(features, live_user, items, specs)
            if inputs is not None:
                return inputs, features.dataset.id, False
        user = features.user(user_id)
        if user is None:
            return None
        return features.ranking_inputs(user, items, specs), features.dataset.id, live is not None
