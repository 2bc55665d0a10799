#!/usr/bin/env bash
# Set up (idempotent) and run the main job on the built-in default model and sample data.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/shelfsight demo "$@"
