#!/usr/bin/env bash
# The kiosk-side suite as a kiosk installs it: a second virtualenv (.venv-edge) with only the
# `edge` extra and the test tools, no TensorFlow. Every test not marked `workstation` must run
# and pass here; the run fails if any errors, or skips because TensorFlow or Keras is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv-edge/bin/python ]; then
  "$PY" -m venv .venv-edge
fi
if [ ! -f .venv-edge/.installed ] || [ setup.cfg -nt .venv-edge/.installed ]; then
  .venv-edge/bin/python -m pip install -q --upgrade pip
  .venv-edge/bin/python -m pip install -q -e '.[edge,test]'
  touch .venv-edge/.installed
fi
if .venv-edge/bin/python -c "import tensorflow" 2>/dev/null; then
  echo "test-edge: TensorFlow is importable in .venv-edge; the edge extra must not pull it in" >&2
  exit 1
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
# The workstation areas import TensorFlow at collection; the rest is selected by marker.
.venv-edge/bin/python -m pytest -m "not workstation" --ignore=tests/train --ignore=tests/convert -rs -p no:cacheprovider "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if [ "$status" -ne 0 ]; then
  exit "$status"
fi
if grep -E "^SKIPPED" "$log" | grep -iE "tensorflow|keras" >/dev/null; then
  echo "test-edge: tests above skip for want of TensorFlow; mark them workstation or make them edge-only" >&2
  exit 1
fi
