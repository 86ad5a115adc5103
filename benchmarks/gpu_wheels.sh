#!/usr/bin/env bash
# Run HERE (where PyPI is reachable) before a device session: fills .whl/ with what the GPU machine
# lacks. That machine cannot fetch anything; its image has torch, accelerate, tokenizers, safetensors
# and huggingface_hub, but an older transformers (5.17 when last read). The wheels are pure Python,
# about 15 MB: the transformers and peft versions the CPU suite runs. tinyvlm itself is installed
# there from the working tree that travels, so it is never a stale copy.
# Then, through the device tool, with carry [".whl"]:  bash benchmarks/gpu_session.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TRANSFORMERS=${TRANSFORMERS_VERSION:-5.24.0}
PEFT=${PEFT_VERSION:-0.21.2}
rm -rf .whl.tmp && mkdir -p .whl.tmp
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d .whl.tmp \
    "transformers==$TRANSFORMERS" "peft==$PEFT"
rm -rf .whl && mv .whl.tmp .whl
ls -l .whl
