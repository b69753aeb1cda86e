#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py): by default the realistic training steps of every pruner
# (scripts/gpu_steps.py: ResNet-50 and ViT-B/16, batch 128, bf16) and the quick-suite cells on CUDA;
# with arguments, any of its sections -> OUT_DIR/gpu-check.md + gpu-check.json (default OUT_DIR: docs). W&B off;
# runs go to a temporary folder that is deleted at the end.
#   scripts/gpu_check.sh [OUT_DIR] [gpu_check.py arguments, e.g. --sections cells]
#   scripts/gpu_check.sh docs --sections sparse24   # the 2:4 kernel timings, as a call of their own
#                                                   # (sections already in OUT_DIR/gpu-check.json are kept)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-docs}
shift || true
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
export SMARTBENCH_COMMIT=${SMARTBENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
# default: the realistic training steps (about 6 min) and the quick-suite cells on CUDA, under 10 min
[ $# -gt 0 ] || set -- --sections train_steps,cells --skip-cpu
exec "$PY" scripts/gpu_check.py --out-dir "$OUT_DIR" "$@"
