#!/usr/bin/env python
"""Benchmark ranking and retrieval serving paths, side by side in one run.

1. Ranking requests of 200 candidates (real test rows of the dataset), latency at batch 1 / 64 / 1024
   rows: the trained TorchRec model in torch eager (KeyedJaggedTensor input), the exported gather
   module in torch eager, and the ONNX graph in ONNX Runtime in-process.
2. Triton (the real server, CPU twin configs) serving the exported DLRM, with and without dynamic
   batching, at client concurrency 1, 4 and 16: requests/s and p50 / p99 latency.
3. Retrieval on a catalogue of ``--items`` (1M by default) clustered unit vectors: the ANN index the
   exporter would build against exact inner-product search, queries/s and recall@100.

    .venv/bin/python scripts/bench_ranking.py [--checkpoint runs/train/<run>/checkpoint_*/checkpoint.ckpt]
        [--items 1000000] [--skip-triton] [--skip-ann]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl
import torch

from recsys.data.dataset import Dataset
from recsys.export import ann
from recsys.export.exporter import export_onnx
from recsys.export.serving import ServingRanker, input_specs
from recsys.export.signature import ModelSignature, TensorSpec, serving_inputs
from recsys.models.config import DLRMConfig
from recsys.models.dlrm import Ranker
from recsys.models.inputs import make_batch
from recsys.schema import load_schema
from recsys.training.checkpoint import load_model
from recsys.training.job import newest_dataset

CANDIDATES = 200
BATCHES = (1, 64, 1024)
CONCURRENCY = (1, 4, 16)


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def in_process(ranker: Ranker, rows: pl.DataFrame, onnx_path: Path, signature: ModelSignature) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    gather = ServingRanker(ranker).eval()
    results = {}
    for batch in BATCHES:
        part = rows.head(batch)
        kjt_batch = make_batch(part, ranker.spec)
        inputs = serving_inputs(part, signature.inputs)
        tensors = [torch.from_numpy(inputs[s.name]) for s in signature.inputs]
        repeats = max(20, 2000 // batch)
        with torch.no_grad():
            eager = timed(lambda b=kjt_batch: ranker(b), repeats)
            gathered = timed(lambda t=tensors: gather(*t), repeats)
        onnx = timed(lambda i=inputs: session.run(None, i), repeats)
        results[batch] = {"torchrec eager": statistics.median(eager), "gather eager": statistics.median(gathered),
                          "onnx runtime": statistics.median(onnx)}
    return results


def print_in_process(results: dict) -> None:
    print(f"\n1. ranking in-process, median latency (ms) per call; {torch.get_num_threads()} threads")
    print(f"   {'batch':>6} {'torchrec eager':>15} {'gather eager':>13} {'onnx runtime':>13} {'ORT speedup':>12}")
    for batch, r in results.items():
        print(f"   {batch:>6} {r['torchrec eager']:>15.3f} {r['gather eager']:>13.3f} {r['onnx runtime']:>13.3f} "
              f"{r['torchrec eager'] / r['onnx runtime']:>11.2f}x")


def load(url: str, inputs: dict[str, np.ndarray], concurrency: int, seconds: float) -> tuple[float, list[float]]:
    """Keep ``concurrency`` requests in flight on one gRPC client for ``seconds``: requests/s and latencies (ms).

    Asynchronous calls from one thread: a thread per request would measure Python's GIL, not the server.
    """
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    request = []
    for name, array in inputs.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
        tensor.set_data_from_numpy(array)
        request.append(tensor)
    slots, latencies, errors = threading.Semaphore(concurrency), [], []

    def done(started: float, result, error) -> None:
        latencies.append((time.perf_counter() - started) * 1000)
        if error is not None or result.as_numpy("p_click").shape != (CANDIDATES, 1):
            errors.append(error or "wrong-shaped answer")
        slots.release()

    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        slots.acquire()
        client.async_infer("dlrm", request, callback=partial(done, time.perf_counter()))
    for _ in range(concurrency):  # wait for the last ones
        slots.acquire()
    elapsed = time.perf_counter() - start
    client.close()
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, e.g. {errors[0]}")
    return len(latencies) / elapsed, latencies


def triton(exported: Path, rows: pl.DataFrame, signature: ModelSignature, tmp: Path, seconds: float) -> None:
    from recsys.deploy import server
    from recsys.deploy.repository import TritonModelSettings, add_version

    inputs = serving_inputs(rows, signature.inputs)
    figures: dict[str, dict[int, tuple[float, list[float]]]] = {}
    for label, batching in (("dynamic batching", True), ("no batching", False)):
        repo = tmp / f"repo-{batching}"
        add_version(repo, exported, settings=TritonModelSettings(dynamic_batching=batching))
        info = server.start(repo, ["dlrm"], run_dir=tmp / f"server-{batching}")
        try:
            figures[label] = {c: load(info.grpc_url, inputs, c, seconds) for c in CONCURRENCY}
        finally:
            server.stop(tmp / f"server-{batching}")
    print(f"\n2. Triton (CPU twin: Python backend + ONNX Runtime), requests of {CANDIDATES} candidates over gRPC, "
          f"{seconds:.0f} s each")
    print(f"   {'concurrency':>11} {'setting':>17} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for c in CONCURRENCY:
        for label, runs in figures.items():
            rps, lat = runs[c]
            print(f"   {c:>11} {label:>17} {rps:>8.1f} {percentile(lat, 50):>8.2f} {percentile(lat, 99):>8.2f}")
        ratio = figures["dynamic batching"][c][0] / figures["no batching"][c][0]
        print(f"   {c:>11} {'batched/unbatched':>17} {ratio:>7.2f}x")
    ratio = figures["dynamic batching"][16][0] / figures["no batching"][16][0]
    print(f"   dynamic batching at concurrency 16: {ratio:.2f}x the unbatched throughput "
          f"[target >= 3x: {'PASS' if ratio >= 3 else 'MISS'}]")


def retrieval(n_items: int, clusters: int, spread: float, dim: int = 64, n_queries: int = 1000) -> None:
    """Items and queries drawn around ``clusters`` random centres with Gaussian ``spread`` (then L2-normalised):
    the looser the clusters, the harder for any ANN index (uniform vectors are the worst case)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)

    def clustered(n: int) -> np.ndarray:
        x = centres[rng.integers(0, len(centres), n)] + spread * rng.normal(size=(n, dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    items, queries = clustered(n_items), clustered(n_queries)
    start = time.perf_counter()
    index, info = ann.build_index(items, queries[:200])
    build_s = time.perf_counter() - start
    exact = ann.exact_top_k(items, queries)
    flat = ann.faiss.IndexFlatIP(dim)
    flat.add(items)
    exact_qps = ann.queries_per_second(flat, queries)
    ann_qps = ann.queries_per_second(index, queries)
    recall = ann.recall_at_k(index.search(queries, ann.K)[1], exact)
    print(f"\n3. retrieval over {n_items:,} items x {dim} dims ({clusters:,} clusters, spread {spread}), "
          f"{n_queries} queries, top {ann.K}")
    print(f"   exact (IndexFlatIP)         {exact_qps:>10,.0f} queries/s  recall@100 1.000")
    print(f"   {info.kind} {info.params}  {ann_qps:>10,.0f} queries/s  recall@100 {recall:.3f}  "
          f"(built in {build_s:.0f} s)")
    print(f"   ANN / exact: {ann_qps / exact_qps:.1f}x the queries/s "
          f"[target >= 10x at recall >= 0.95: {'PASS' if ann_qps >= 10 * exact_qps and recall >= 0.95 else 'MISS'}]")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--checkpoint", help="a trained DLRM checkpoint (default: random weights, same shapes)")
    p.add_argument("--dataset", help="dataset for the request rows (default: the checkpoint's, else the newest)")
    p.add_argument("--items", type=int, default=1_000_000, help="catalogue size for the retrieval part")
    p.add_argument("--clusters", type=int, default=3000, help="retrieval part: cluster centres of the catalogue")
    p.add_argument("--spread", type=float, default=1.0, help="retrieval part: spread of items around a centre")
    p.add_argument("--seconds", type=float, default=8.0, help="load per Triton setting and concurrency")
    p.add_argument("--skip-triton", action="store_true")
    p.add_argument("--skip-ann", action="store_true")
    args = p.parse_args(argv)
    schema = load_schema()
    if args.checkpoint:
        ranker, meta = load_model(args.checkpoint)
        dataset = Dataset.open(args.dataset or meta["dataset_path"], schema)
    else:
        dataset = Dataset.open(args.dataset or newest_dataset(), schema)
        torch.manual_seed(0)
        ranker = Ranker(schema, dataset.manifest.cardinalities, DLRMConfig()).eval()
    rows = pl.read_parquet(dataset.shards("ranking", "test")[0]).head(max(BATCHES))
    signature = ModelSignature("dlrm", input_specs(ranker.spec), (TensorSpec("p_click", "float32", (1,)),),
                               {"schema_hash": schema.hash, "dataset_id": dataset.id, "training_run": "bench"})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "dlrm"
        onnx_path = export_onnx(ServingRanker(ranker), signature, serving_inputs(rows.head(8), signature.inputs),
                                folder)
        print(f"DLRM from {'checkpoint ' + args.checkpoint if args.checkpoint else 'random weights'}; request rows "
              f"from dataset {dataset.id}")
        results = in_process(ranker, rows, onnx_path, signature)
        print_in_process(results)
        ratios = [r["torchrec eager"] / r["onnx runtime"] for r in results.values()]
        print(f"   ONNX Runtime vs TorchRec eager: {min(ratios):.1f}x at worst [target >= 2x: "
              f"{'PASS' if min(ratios) >= 2 else 'MISS'}]")
        if not args.skip_triton:
            triton(folder, rows.head(CANDIDATES), signature, Path(tmp), args.seconds)
    if not args.skip_ann:
        retrieval(args.items, args.clusters, args.spread)
    return 0


if __name__ == "__main__":
    sys.exit(main())
