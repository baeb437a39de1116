"""GPU tests: skipped without CUDA. Run them with ``scripts/gpu_check.sh`` on a machine with a GPU.

They need only torch (plus TorchRec with fbgemm-gpu's CUDA kernels for the sharded-training test), so
this conftest does not import the project's data fixtures: ``--confcutdir tests/gpu`` keeps pytest
from loading ``tests/conftest.py`` (Polars) on a bare GPU box.
"""

from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    """Skip this folder's tests without CUDA (the hook sees the whole session's items: only ours are marked)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(skip)
