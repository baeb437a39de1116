"""Retrieval in the ingress replica: `recsys.online.retrieval.QueryRetriever` (the query tower on ONNX Runtime and
the item ANN index on FAISS), requests batched with `@serve.batch` on the replica's own event loop: the query tower
runs once on every user of a batch and FAISS searches all their embeddings in one call.

It was a deployment of its own, one Ray hop from the ingress; on the 2-core machine that hop (serialising the
inputs and the answer, a gRPC call, the other actor's event loop) cost more CPU than the search
(scripts/bench_serving.py), as the Triton client's had. Without a ranker (``ranker_model: ""``) each answer
carries the index's scores too (item id -> score, best first); with one, the ids alone.
"""

from __future__ import annotations

import numpy as np
from ray import serve

from recsys.online.retrieval import QueryRetriever
from recsys.serving_config import ServingConfig


class Retrieval:
    def __init__(self, config: ServingConfig, schema_hash: str):
        self.retriever = QueryRetriever(config.retrieval_export, schema_hash)
        self.version = self.retriever.version
        self.candidates = config.candidates
        self.scored = not config.ranker_model  # the scores are the answer's only when nothing ranks after
        self.retrieve.set_max_batch_size(config.batching.max_batch_size)
        self.retrieve.set_batch_wait_timeout_s(config.batching.batch_wait_timeout_s)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def retrieve(self, inputs: list[dict[str, np.ndarray]]) -> list[list[int]] | list[dict[int, float]]:
        if self.scored:
            return self.retriever.search_scored(inputs, self.candidates)
        return self.retriever.search(inputs, self.candidates)

    def ready(self) -> bool:
        return self.retriever.index.ntotal > 0
