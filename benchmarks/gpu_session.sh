#!/usr/bin/env bash
# Run ON the device machine, from the repo root, after benchmarks/gpu_wheels.sh filled .whl here:
#   device run: command "bash benchmarks/gpu_session.sh", carry [".whl"], timeout_s 600
# Installs the carried wheels and this tree's tinyvlm beside the image's torch, then runs gpu.py under a time
# limit that leaves the call room to return; results land in $OUT (gpu.json, rewritten after every
# check, and gpu.log). Extra arguments go to gpu.py (a CPU rehearsal: --device cpu --quick).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
SITE=/tmp/tinyvlm-site
rm -rf "$SITE" build
# shellcheck disable=SC2046  # the wheels, if any were carried
"$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
    --no-build-isolation --target "$SITE" $(ls .whl/*.whl 2>/dev/null) . || exit 1
rm -rf build  # setuptools' scratch copy of the package
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
    (cd /tmp && "$PY" -c "import torch, transformers, peft, tinyvlm; print('torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__, '| tinyvlm', tinyvlm.__file__)")
    timeout "${GPU_CHECK_SECONDS:-540}" "$PY" benchmarks/gpu.py --json "$OUT/gpu.json" "$@"
} 2>&1 | tee "$OUT/gpu.log"
exit "${PIPESTATUS[0]}"
