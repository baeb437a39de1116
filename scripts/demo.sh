#!/usr/bin/env bash
# The main job: install (if needed) and run the pipeline end to end on the embedded default shop.
#   generate -> validate -> build features (versioned dataset)
# Extra arguments are passed to every step as config overrides, e.g.
#   ./scripts/demo.sh --set generator.target_events=10000000
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/install.sh
source scripts/env.sh

config=configs/data/default.yaml
runs=runs
echo
echo "== 1/3 generate XYZShopSmart events ($config)"
recsys data generate --config "$config" --out "$runs/data/raw/xyzshop" "$@"
echo
echo "== 2/3 validate"
recsys data validate --config "$config" --source "$runs/data/raw/xyzshop" --out "$runs/data/validated/xyzshop" "$@"
echo
echo "== 3/3 build the versioned feature dataset"
recsys data build --config "$config" --validated "$runs/data/validated/xyzshop" --root "$runs/datasets" "$@"
echo
echo "Everything is under $runs/:"
echo "  raw export + ground truth   $runs/data/raw/xyzshop"
echo "  validated tables, report    $runs/data/validated/xyzshop  (quarantine/, report.txt)"
echo "  datasets                    $runs/datasets  (recsys data show)"
