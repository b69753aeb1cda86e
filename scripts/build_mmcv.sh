#!/usr/bin/env bash
# Build mmcv 2.1.0 (full, with C++ ops) against torch 2.14.1 and cache the wheel outside the repo.
# torch >= 2.14 headers need C++20; mmcv's setup.py hard-codes -std=c++17, so we patch it.
# setuptools<81 is needed because setup.py imports pkg_resources; no build isolation.
# Fast path: scripts/mmcv_unity.py turns the 77 CPU translation units into 5 (unity build) and
# drops debug info; if it refuses (an unexpected source tree) the plain build runs instead.
# SMARTBENCH_MMCV_PLAIN=1 forces the plain build.
set -euo pipefail
PY=${1:?usage: build_mmcv.sh PYTHON}
CACHE=${SMARTBENCH_WHEEL_CACHE:-$HOME/.cache/smartbench/wheels}
mkdir -p "$CACHE"
if "$PY" -c "import mmcv, mmcv.ops, sys; sys.exit(0 if mmcv.__version__ == '2.1.0' else 1)" 2>/dev/null; then
  exit 0
fi
WHEEL=$(ls "$CACHE"/mmcv-2.1.0-*.whl 2>/dev/null | head -1 || true)
if [ -z "$WHEEL" ]; then
  echo "[build_mmcv] building mmcv 2.1.0 from source; wheel cached in $CACHE"
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  "$PY" -m pip download --no-deps --no-build-isolation --no-binary mmcv -d "$WORK" mmcv==2.1.0
  tar xzf "$WORK"/mmcv-2.1.0.tar.gz -C "$WORK"
  if [ "${SMARTBENCH_MMCV_PLAIN:-0}" != 1 ] && \
     "$PY" "$(dirname "$0")/mmcv_unity.py" "$WORK"/mmcv-2.1.0; then
    echo "[build_mmcv] unity build: 5 translation units, -g0 (about 1-2 min on 2 cores)"
  else
    echo "[build_mmcv] plain build: 77 translation units (about 15-30 min on 2 cores)"
  fi
  sed -i "s/'-std=c++17'/'-std=c++20'/g" "$WORK"/mmcv-2.1.0/setup.py
  # ninja compiles MAX_JOBS units at once; without it torch builds serially
  export PATH="$(dirname "$PY"):$PATH"
  if ! MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-2} \
       "$PY" -m pip wheel --no-build-isolation --no-deps "$WORK"/mmcv-2.1.0 -w "$WORK/wheels" > "$WORK/build.log" 2>&1; then
    tail -40 "$WORK/build.log"
    echo "[build_mmcv] ERROR: the mmcv 2.1.0 build failed (log above). Needs gcc with C++20, torch==2.14.1, setuptools<81." >&2
    exit 1
  fi
  cp "$WORK"/wheels/mmcv-2.1.0-*.whl "$CACHE"/
  WHEEL=$(ls "$CACHE"/mmcv-2.1.0-*.whl | head -1)
fi
"$PY" -m pip install --no-deps "$WHEEL"
