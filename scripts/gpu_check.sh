#!/usr/bin/env bash
# The checks that need a GPU, in one short run: what the machine has, then tests/gpu (skipped pieces
# say why, e.g. no TorchRec with CUDA kernels). Needs only torch and pytest; uses the project's venv
# when there is one, else the python on PATH.
#   ./scripts/gpu_check.sh            (exit status: pytest's)
set -uo pipefail
cd "$(dirname "$0")/.."
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"
$py - <<'PY'
import importlib.metadata as md
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0), f"(capability {torch.cuda.get_device_capability(0)})")
for name in ("torchrec", "fbgemm-gpu", "fbgemm-gpu-cpu", "pytorch-lightning", "onnx", "onnxruntime", "onnxruntime-gpu",
             "ray", "tensorrt"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name}: not installed")
PY
echo "== tests/gpu"
PYTHONPATH=. $py -m pytest tests/gpu --confcutdir tests/gpu -p no:cacheprovider -v -rs
