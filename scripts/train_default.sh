#!/usr/bin/env bash
# Reproduce the default model shipped in edge_app/assets/ (see edge_app/assets/MODEL_CARD.md).
# Usage: scripts/train_default.sh [DATA_ROOT] [RUN_DIR]
#   DATA_ROOT defaults to ../shared/datasets (Grocery Store + GroZi-120).
# Takes ~40 min on 2 CPU cores; uses a GPU when TensorFlow sees one.
# The iconic images (classes.csv) are listed six times: one web-shop shot per product is
# otherwise drowned by ~30 store photos, and kiosks are often stocked with exactly such shots.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/datasets}
RUN=${2:-runs/default}
SS=.venv/bin/shelfsight

$SS -v train --run-dir "$RUN" \
  --data "$DATA/grocery-store/train.txt" \
  --data "$DATA/grozi-120" \
  $(for _ in 1 2 3 4 5 6; do printf -- '--data %s ' "$DATA/grocery-store/classes.csv"; done) \
  --input-size 224 --dim 256 --epochs 12 --steps-per-epoch 120 --batch-size 32 --seed 0

# Full-integer int8 export, calibrated on training photos, gated on parity with the float model
# against the validation photos (a gate, not a tuning signal).
$SS -v convert --model "$RUN" --out edge_app/assets/default_model.tflite \
  --calibration "$DATA/grocery-store/train" --calibration-limit 800 \
  --parity-catalog "$DATA/grocery-store/iconic-images-and-descriptions" \
  --parity-queries "$DATA/grocery-store/val"
