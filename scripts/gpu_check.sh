#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): quick-suite cells on CUDA vs CPU, one seg cell, step-time
# ratios, 2:4 latency -> OUT_DIR/gpu-check.md + gpu-check.json (default OUT_DIR: docs). W&B off;
# runs go to a temporary folder that is deleted at the end.
#   scripts/gpu_check.sh [OUT_DIR] [gpu_check.py arguments, e.g. --sections cells]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-docs}
shift || true
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
export SMARTBENCH_COMMIT=${SMARTBENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
exec "$PY" scripts/gpu_check.py --out-dir "$OUT_DIR" "$@"
