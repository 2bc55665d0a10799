#!/usr/bin/env bash
# Product-disjoint check (issue 2): train without 20 Grocery Store products, then measure
# retrieval on those 20 only (scripts/bench_retrieval.py --disjoint-run ...).
# The 20 are every 4th product id in sorted order: a fixed, unbiased choice.
# Same recipe as scripts/train_default.sh, minus those products.
# Usage: scripts/train_disjoint.sh [DATA_ROOT] [RUN_DIR] [EPOCHS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/datasets}
RUN=${2:-runs/disjoint}
EPOCHS=${3:-12}
STEPS=${4:-120}
mkdir -p "$RUN"
.venv/bin/python - "$DATA/grocery-store/train.txt" > "$RUN/held_out.txt" <<'PY'
import sys
from train.data import load_source
products = sorted({s.product for s in load_source(sys.argv[1])})
print("\n".join(products[::4][:20]))
PY
.venv/bin/shelfsight -v train --run-dir "$RUN" \
  --data "$DATA/grocery-store/train.txt" \
  --data "$DATA/grozi-120" \
  $(for _ in 1 2 3 4 5 6; do printf -- '--data %s ' "$DATA/grocery-store/classes.csv"; done) \
  --exclude-products "$RUN/held_out.txt" \
  --input-size 224 --dim 256 --epochs "$EPOCHS" --steps-per-epoch "$STEPS" --batch-size 32 --seed 0
