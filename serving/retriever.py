"""The retriever deployment: `recsys.online.retrieval.QueryRetriever` (query tower and item ANN index) in Ray Serve.

Requests are batched with `@serve.batch`: the query tower runs once on every user of a batch and FAISS
searches all their embeddings in one call. Without a ranker (``ranker_model: ""``) each answer carries the
index's scores too (item id -> score, best first); with one, the ids alone.
"""

from __future__ import annotations

import numpy as np
from ray import serve

from recsys.online.retrieval import QueryRetriever
from recsys.serving_config import ServingConfig


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class Retriever:
    def __init__(self, config: ServingConfig, schema_hash: str):
        self.retriever = QueryRetriever(config.retrieval_export, schema_hash)
        self.candidates = config.candidates
        self.scored = not config.ranker_model  # the scores are the answer's only when nothing ranks after
        self.retrieve.set_max_batch_size(config.batching.max_batch_size)
        self.retrieve.set_batch_wait_timeout_s(config.batching.batch_wait_timeout_s)

    def describe(self) -> dict:
        return {"version": self.retriever.version, "inputs": self.retriever.signature.to_dict()["inputs"],
                "items": len(self.retriever.item_ids), "index": self.retriever.info.kind}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def retrieve(self, inputs: list[dict[str, np.ndarray]]) -> list[list[int]] | list[dict[int, float]]:
        if self.scored:
            return self.retriever.search_scored(inputs, self.candidates)
        return self.retriever.search(inputs, self.candidates)

    def ready(self) -> bool:
        return self.retriever.index.ntotal > 0
