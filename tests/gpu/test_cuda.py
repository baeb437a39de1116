"""What runs on a GPU: brute-force retrieval scoring, and a TorchRec-sharded DLRM step with NCCL."""

import importlib.metadata
import os

import numpy as np
import pytest
import torch

from recsys.evaluation.metrics import top_k


def test_brute_force_top_k_on_cuda_matches_cpu():
    g = torch.Generator().manual_seed(0)
    users, items = torch.randn(300, 32, generator=g), torch.randn(20000, 32, generator=g)
    exclude = [np.arange(u % 5) for u in range(300)]
    on = {d: top_k(lambda rows, d=d: (users[torch.from_numpy(rows)].to(d) @ items.to(d).T).cpu(), 300, exclude, 100)
          for d in ("cpu", "cuda")}
    np.testing.assert_array_equal(on["cpu"], on["cuda"])


def _torchrec_cuda() -> bool:
    """TorchRec with fbgemm-gpu's CUDA build (the CPU build installs as ``fbgemm-gpu-cpu``)."""
    try:
        return bool(importlib.metadata.version("torchrec") and importlib.metadata.version("fbgemm-gpu"))
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _torchrec_cuda(), reason="needs TorchRec and fbgemm-gpu built with CUDA")
def test_sharded_dlrm_trains_on_cuda_with_nccl():
    import torch.distributed as dist
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.models.dlrm import DLRM
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        device = torch.device("cuda:0")
        tables = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=16, num_embeddings=1000, feature_names=[f"f{i}"])
                  for i in range(3)]
        ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
        model = DLRM(embedding_bag_collection=ebc, dense_in_features=4, dense_arch_layer_sizes=[32, 16],
                     over_arch_layer_sizes=[32, 1], dense_device=device)
        apply_optimizer_in_backward(torch.optim.Adagrad, model.sparse_arch.parameters(), {"lr": 0.05})
        model = DistributedModelParallel(model, device=device)
        dense = torch.optim.Adam([p for n, p in model.named_parameters() if "embedding_bags" not in n], lr=1e-2)
        g = torch.Generator().manual_seed(0)
        n = 512
        sparse = KeyedJaggedTensor.from_lengths_sync(
            keys=["f0", "f1", "f2"], values=torch.randint(0, 1000, (3 * n,), generator=g),
            lengths=torch.ones(3 * n, dtype=torch.int32)).to(device)
        x = torch.randn(n, 4, generator=g).to(device)
        y = (torch.rand(n, generator=g) < 0.3).float().to(device)
        losses = []
        for _ in range(20):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x, sparse).squeeze(-1), y)
            dense.zero_grad()
            loss.backward()
            dense.step()
            losses.append(float(loss))
        assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    finally:
        dist.destroy_process_group()
