"""Experiment tracking with Weights & Biases: offline by default, online when WANDB_API_KEY is set.

Offline runs are written under the run's own folder (``<run>/wandb/offline-run-*``) and can be uploaded
later with ``wandb sync``; nothing goes to ``~/.cache`` or ``~/.local``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from recsys.schema import PROJECT_ROOT

PROJECT = "recsys"


def wandb_mode() -> str:
    """``WANDB_MODE`` if set, else online with an API key and offline without one."""
    return os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")


def prepare_wandb_dirs(run_dir: Path) -> None:
    """Point every W&B directory at the run's folder."""
    root = Path(run_dir) / "wandb-state"
    for var, sub in (("WANDB_DIR", ""), ("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_CONFIG_DIR", "config")):
        path = Path(run_dir) if var == "WANDB_DIR" else root / sub
        path.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(path)
    os.environ.setdefault("WANDB_SILENT", "true")


def code_version() -> str:
    """The git commit of the code (``+dirty`` with uncommitted changes), or "unknown" outside a checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")
