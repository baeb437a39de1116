# Sourced by the scripts: the project's venv first on PATH, and the environment every run needs.
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$_root/.venv/bin:$PATH"
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0   # else Ray binds the external address instead of loopback
export MLFLOW_DISABLE_TELEMETRY=true
export WANDB_MODE="${WANDB_MODE:-offline}"
unset _root
