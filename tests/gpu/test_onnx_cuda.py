"""ONNX on the GPU: a gather + MLP graph like the exported ranker, on ONNX Runtime's CUDA and TensorRT
execution providers against its CPU provider, and torch eager on CUDA against CPU."""

import numpy as np
import pytest
import torch
from torch import nn

ort = pytest.importorskip("onnxruntime")


class GatherRanker(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(5000, 16))
        self.mlp = nn.Sequential(nn.Linear(16 * 2 + 3, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, item_id, history, dense):
        mask = (history != 0).unsqueeze(-1).float()
        pooled = (self.table[history] * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.sigmoid(self.mlp(torch.cat([self.table[item_id[:, 0]], pooled, dense], dim=1)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = GatherRanker().eval()
    g = torch.Generator().manual_seed(1)
    inputs = {"item_id": torch.randint(1, 5000, (256, 1), generator=g),
              "history": torch.randint(0, 5000, (256, 20), generator=g),
              "dense": torch.randn(256, 3, generator=g)}
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    torch.onnx.export(model, tuple(inputs.values()), str(path), input_names=list(inputs), output_names=["p"],
                      dynamic_axes={n: {0: "batch"} for n in [*inputs, "p"]}, opset_version=17, dynamo=False)
    return model, path, {k: v.numpy() for k, v in inputs.items()}


def _run(path, inputs, provider):
    if provider not in ort.get_available_providers():
        pytest.skip(f"{provider} is not available in this onnxruntime build")
    session = ort.InferenceSession(str(path), providers=[provider])
    assert session.get_providers()[0] == provider  # no silent fallback to the CPU
    return session.run(None, inputs)[0]


def test_onnx_on_cuda_matches_the_cpu(exported):
    _, path, inputs = exported
    np.testing.assert_allclose(_run(path, inputs, "CUDAExecutionProvider"),
                               _run(path, inputs, "CPUExecutionProvider"), atol=1e-5)


def test_onnx_on_tensorrt_matches_the_cpu(exported):
    _, path, inputs = exported
    np.testing.assert_allclose(_run(path, inputs, "TensorrtExecutionProvider"),
                               _run(path, inputs, "CPUExecutionProvider"), atol=1e-3)


def test_torch_eager_on_cuda_matches_the_cpu(exported):
    model, _, inputs = exported
    tensors = [torch.from_numpy(v) for v in inputs.values()]
    with torch.no_grad():
        cpu = model(*tensors)
        cuda = model.to("cuda")(*[t.to("cuda") for t in tensors]).cpu()
    torch.testing.assert_close(cuda, cpu, atol=1e-5, rtol=1e-5)
