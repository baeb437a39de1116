#!/usr/bin/env bash
# The main job: install (if needed) and run the pipeline end to end on the embedded default shop.
#   generate -> validate -> build features (versioned dataset) -> train both models on Ray (2 CPU workers)
#   -> evaluate against popularity and the oracle -> export (ONNX, parity-checked; item index)
#   -> Triton model repository -> score a few real rows on the real tritonserver -> the Ray Serve app answers
#   real HTTP requests (recommendations next to what users did, latency) -> a Markdown report with plots -> stop
# Extra arguments are passed to the data steps as config overrides, e.g.
#   ./scripts/demo.sh --set generator.target_events=10000000
# --keep-serving leaves Triton and the app running at the end (Ctrl-C stops both).
# --drift runs the other story instead: the self-retraining loop through a preference shift (scripts/drift_demo.py:
#   train before the shift, serve, simulated shoppers, the shift, the alert, `recsys loop` retrains, canaries and
#   promotes; runs/drift-demo-*/report.md with the timeline plot). Its further arguments go to that script.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
keep_serving=0
drift=0
overrides=()
for arg in "$@"; do
  case "$arg" in
    --keep-serving) keep_serving=1 ;;
    --drift) drift=1 ;;
    *) overrides+=("$arg") ;;
  esac
done
set -- "${overrides[@]+"${overrides[@]}"}"
./scripts/install.sh
source scripts/env.sh
if [ "$drift" = 1 ]; then
  exec python scripts/drift_demo.py "$@"
fi

config=configs/data/default.yaml
runs=runs
stamp=$(date +%Y%m%d-%H%M%S)
echo
echo "== 1/8 generate XYZShopSmart events ($config)"
recsys data generate --config "$config" --out "$runs/data/raw/xyzshop" "$@"
echo
echo "== 2/8 validate"
recsys data validate --config "$config" --source "$runs/data/raw/xyzshop" --out "$runs/data/validated/xyzshop" "$@"
echo
echo "== 3/8 build the versioned feature dataset"
build_log=$(mktemp)
recsys data build --config "$config" --validated "$runs/data/validated/xyzshop" --root "$runs/datasets" "$@" \
  | tee "$build_log"
dataset=$(sed -n 's/^dataset ds-[0-9a-f]* .*: \(.*\)$/\1/p' "$build_log" | tail -1)
rm -f "$build_log"
echo
echo "== 4-5/8 train the DLRM and the two-tower on Ray Train at the same time (2 workers each, TorchRec sharding)"
echo "         and evaluate both beside popularity and the oracle"
recsys train both --config configs/train/default.yaml --dataset "$dataset" --workers 2 \
  --set "name=demo-{model}-$stamp"
echo
echo "== 6/8 export (ONNX, parity-checked; the item index) into the Triton model repository ($runs/triton_models)"
# a fresh repository each run: this run's models only (an earlier run's may serve another schema: Triton's model
# versions must share one signature)
rm -rf "$runs/triton_models"
recsys export "$runs/train/demo-dlrm-$stamp" "$runs/train/demo-two-tower-$stamp" --repository "$runs/triton_models"
echo
echo "== 7/8 serve on the real tritonserver and score a few real rows"
recsys triton start --repository "$runs/triton_models" --run-dir "$runs/triton"
trap 'recsys triton stop --run-dir "$runs/triton" >/dev/null 2>&1 || true' EXIT
python - "$dataset" "$runs/triton" "$runs/train/demo-dlrm-$stamp/export/dlrm" <<'PY'
import sys

import polars as pl
import tritonclient.grpc as grpcclient

from recsys.data.dataset import Dataset
from recsys.deploy.server import read_state
from recsys.export.signature import serving_inputs
from recsys.export.signature import ModelSignature
from recsys.schema import load_schema

dataset, run_dir, exported = Dataset.open(sys.argv[1]), sys.argv[2], sys.argv[3]
signature = ModelSignature.read(exported)
rows = pl.read_parquet(dataset.shards("ranking", "test")[0]).head(5)
inputs = []
for name, array in serving_inputs(rows, signature.inputs).items():
    tensor = grpcclient.InferInput(name, list(array.shape), "INT64" if array.dtype.kind == "i" else "FP32")
    tensor.set_data_from_numpy(array)
    inputs.append(tensor)
client = grpcclient.InferenceServerClient(read_state(run_dir).grpc_url)
scores = client.infer("dlrm", inputs).as_numpy("p_click")[:, 0]
print("  test impressions scored by Triton (p_click vs what happened):")
label = load_schema().label("dlrm").name
for (user, item, clicked), p in zip(rows.select("_user", "_item", label).iter_rows(), scores):
    print(f"    user {user:>6}  item {item:>5}  p_click {p:.3f}  clicked {bool(clicked)}")
PY
echo
echo "== 8/8 the Ray Serve app: retrieve (query tower + ANN), filter, rank on Triton; real HTTP requests"
grpc_url=$(python -c "from recsys.deploy.server import read_state; print(read_state('$runs/triton').grpc_url)")
port=$(python -c "from recsys.deploy.server import free_port; print(free_port())")
# a rollout state of its own: the newest DLRM version Triton loaded (`recsys models deploy` writes the shared one)
# two ingress replicas behind HAProxy on the port; Triton restarted if it dies; its log and Ray's: $runs/serving.log
recsys serve --set "dataset=$dataset" --set "retrieval_export=$runs/train/demo-two-tower-$stamp/export" \
  --set "triton_url=$grpc_url" --set "port=$port" --set "rollout_file=$runs/serving/rollout-demo-$stamp.json" \
  --set "triton_run_dir=$runs/triton" --set "store.run_dir=$runs/store-$stamp" > "$runs/serving.log" 2>&1 &
serve_pid=$!
trap 'kill -TERM $serve_pid 2>/dev/null; wait $serve_pid 2>/dev/null; recsys triton stop --run-dir "$runs/triton" >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 180); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  kill -0 $serve_pid 2>/dev/null || { echo "recsys serve exited, see $runs/serving.log" >&2; exit 1; }
  sleep 1
done
curl -fs "http://127.0.0.1:$port/readyz" >/dev/null || { echo "the app did not become ready, see $runs/serving.log" >&2; exit 1; }
echo "  app ready on http://127.0.0.1:$port (OpenAPI at /docs)"
python scripts/demo_report.py --url "http://127.0.0.1:$port" --dataset "$dataset" \
  --dlrm-run "$runs/train/demo-dlrm-$stamp" --two-tower-run "$runs/train/demo-two-tower-$stamp" --out "$runs/report"
echo "  what shoppers would click (scripts/bench_quality.py: the app's lists under the generator's click model):"
python scripts/bench_quality.py --url "http://127.0.0.1:$port" --dataset "$dataset" --users 300 \
  --retrieval "$runs/train/demo-two-tower-$stamp/export" --ranker "$runs/train/demo-dlrm-$stamp/export/dlrm" \
  --out "$runs/report" | sed 's/^/  /'
if [ "$keep_serving" = 1 ]; then
  echo
  echo "serving on http://127.0.0.1:$port (POST /recommend, POST /feedback, /docs) with Triton at $grpc_url;"
  echo "Ctrl-C stops both"
  wait $serve_pid || true
  exit 0
fi
kill -TERM $serve_pid && wait $serve_pid 2>/dev/null || true
recsys triton stop --run-dir "$runs/triton"
trap - EXIT
echo
echo "Everything is under $runs/:"
echo "  raw export + ground truth   $runs/data/raw/xyzshop"
echo "  validated tables, report    $runs/data/validated/xyzshop  (quarantine/, report.txt)"
echo "  datasets                    $runs/datasets  (recsys data show)"
echo "  training runs, W&B offline  $runs/train/demo-*-$stamp  (metrics.json, checkpoints, wandb/)"
echo "  exports                     $runs/train/demo-*-$stamp/export"
echo "  Triton model repository     $runs/triton_models  (recsys triton start --repository $runs/triton_models)"
echo "  serving log, feedback log   $runs/serving.log, runs/serving/events"
echo "  report                      $runs/report/report.md  (plots: demo.png)"
