"""GPU tests: skipped without CUDA. Run them with ``scripts/gpu_check.sh`` on a machine with a GPU.

They need only torch (plus TorchRec with fbgemm-gpu's CUDA kernels for the sharded-training test), so
this conftest does not import the project's data fixtures: ``--confcutdir tests/gpu`` keeps pytest
from loading ``tests/conftest.py`` (Polars) on a bare GPU box.
"""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        item.add_marker(skip)
