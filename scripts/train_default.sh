#!/usr/bin/env bash
# Reproduce the default model shipped in edge_app/assets/ (see edge_app/assets/MODEL_CARD.md).
# Usage: scripts/train_default.sh [DATA_ROOT] [RUN_DIR]
#   DATA_ROOT defaults to ../shared/datasets (Grocery Store + GroZi-120).
# Two stages (scripts/recipe.sh), ~50 min on 2 idle CPU cores in all; uses a GPU when
# TensorFlow sees one. Re-running resumes an interrupted stage and skips a finished one.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/datasets}
RUN=${2:-runs/default}
source scripts/recipe.sh

recipe_train "$DATA" "$RUN"

# Full-integer int8 export, calibrated on training photos, gated on parity with the float model
# against the validation photos (a gate, not a tuning signal).
$SS -v convert --model "$RUN/stage2" --out edge_app/assets/default_model.tflite \
  --calibration "$DATA/grocery-store/train" --calibration-limit 800 \
  --parity-catalog "$DATA/grocery-store/iconic-images-and-descriptions" \
  --parity-queries "$DATA/grocery-store/val"
