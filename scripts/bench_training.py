#!/usr/bin/env python
"""Benchmark DLRM training: throughput with 1 and 2 Ray workers, and TorchRec's embedding path against
plain ``torch.nn.EmbeddingBag`` tables of the same shapes.

1. ``recsys train dlrm`` (the real job: Ray Train, TorchRec sharding, Lightning) for one epoch with 1 and
   with 2 workers on the same dataset; throughput is training examples per second summed over workers.
2. In one process on the same batches: the embedding lookups + backward + update of the DLRM's tables,
   (a) TorchRec ``EmbeddingBagCollection`` with its fused in-backward row-wise Adagrad over a
   ``KeyedJaggedTensor``, (b) one ``nn.EmbeddingBag`` (mean) per table with ``torch.optim.Adagrad``.

    .venv/bin/python scripts/bench_training.py [--dataset runs/datasets/<id>]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torchrec import EmbeddingBagCollection
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

from recsys.config import load_config
from recsys.data.dataset import Dataset
from recsys.models.inputs import InputSpec, make_batch
from recsys.schema import PROJECT_ROOT, load_schema
from recsys.training.config import TrainConfig
from recsys.training.data import batches, read_shard
from recsys.training.job import newest_dataset, run


def job_throughput(dataset: Path, workers: int, output: Path) -> float:
    cfg = load_config(TrainConfig, PROJECT_ROOT / "configs" / "train" / "default.yaml",
                      [f"dataset={dataset}", f"workers={workers}", "epochs=1", f"output={output}"])
    return run("dlrm", cfg).metrics["train/epoch_examples_per_s"]


class PlainBags(nn.Module):
    """The same tables as nn.EmbeddingBag modules, one lookup per feature (mean over each bag)."""

    def __init__(self, tables):
        super().__init__()
        self.bags = nn.ModuleDict({t.name: nn.EmbeddingBag(t.num_embeddings, t.embedding_dim, mode="mean")
                                   for t in tables})
        self.table_of = {f: t.name for t in tables for f in t.feature_names}

    def forward(self, kjt) -> torch.Tensor:
        out = []
        for name, jt in kjt.to_dict().items():
            out.append(self.bags[self.table_of[name]](jt.values(), jt.offsets()))
        return torch.cat(out, dim=1)


def embedding_throughput(dataset: Dataset, n_batches: int, batch_size: int) -> dict[str, float]:
    schema = load_schema()
    spec = InputSpec.for_part(schema, "dlrm")
    tables = spec.embedding_tables(dataset.manifest.cardinalities, 16)
    frame = read_shard(dataset, "ranking", "train", 0, spec.columns)
    data = [make_batch(rows, spec).sparse for _, rows in zip(range(n_batches), batches(frame, batch_size, 0),
                                                            strict=False)]
    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(tables=tables)
    apply_optimizer_in_backward(torch.optim.Adagrad, ebc.parameters(), {"lr": 0.01})
    plain = PlainBags(tables)
    plain_opt = torch.optim.Adagrad(plain.parameters(), lr=0.01)

    def step_torchrec(kjt):
        ebc(kjt).values().sum().backward()  # the update happens inside backward

    def step_plain(kjt):
        plain_opt.zero_grad()
        plain(kjt).sum().backward()
        plain_opt.step()

    out = {}
    for name, step in (("torchrec", step_torchrec), ("nn.EmbeddingBag", step_plain)):
        for kjt in data[:3]:  # warm-up
            step(kjt)
        start = time.perf_counter()
        for kjt in data:
            step(kjt)
        out[name] = len(data) * batch_size / (time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", help="dataset folder (default: the newest under runs/datasets)")
    parser.add_argument("--output", type=Path, default=Path("/tmp/recsys-bench-training"))
    parser.add_argument("--batches", type=int, default=200, help="batches for the embedding comparison")
    args = parser.parse_args(argv)
    path = Path(args.dataset) if args.dataset else newest_dataset()
    dataset = Dataset.open(path)
    batch_size = load_config(TrainConfig, PROJECT_ROOT / "configs" / "train" / "default.yaml").batch_size

    emb = embedding_throughput(dataset, args.batches, batch_size)
    jobs = {w: job_throughput(path, w, args.output / f"workers-{w}") for w in (1, 2)}
    print(f"\nDLRM training benchmark on dataset {dataset.id} ({torch.get_num_threads()} torch threads)\n")
    print(f"{'recsys train dlrm, 1 epoch':<40} {'examples/s':>12}")
    for w, v in jobs.items():
        print(f"  {w} worker{'s' if w > 1 else ' '}{'':<29} {v:>12,.0f}")
    print(f"  2 workers / 1 worker: {jobs[2] / jobs[1]:.2f}x")
    print(f"\n{'embedding lookup + backward + update':<40} {'examples/s':>12}"
          f"   (batch {batch_size}, {args.batches} batches)")
    for name, v in emb.items():
        print(f"  {name:<38} {v:>12,.0f}")
    print(f"  torchrec / nn.EmbeddingBag: {emb['torchrec'] / emb['nn.EmbeddingBag']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
