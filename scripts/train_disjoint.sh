#!/usr/bin/env bash
# Product-disjoint check (issue 2): train without 20 Grocery Store products, then measure
# retrieval on those 20 only:
#   scripts/bench_retrieval.py --disjoint-run RUN/stage2 --disjoint-products RUN/held_out.txt ...
# The 20 are every 4th product id in sorted order: a fixed, unbiased choice.
# The shipped recipe (scripts/recipe.sh), minus those products.
# Usage: scripts/train_disjoint.sh [DATA_ROOT] [RUN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/datasets}
RUN=${2:-runs/disjoint}
source scripts/recipe.sh
mkdir -p "$RUN"
.venv/bin/python - "$DATA/grocery-store/train.txt" > "$RUN/held_out.txt" <<'PY'
import sys
from train.data import load_source
products = sorted({s.product for s in load_source(sys.argv[1])})
print("\n".join(products[::4][:20]))
PY
recipe_train "$DATA" "$RUN" --exclude-products "$RUN/held_out.txt"
