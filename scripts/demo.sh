#!/usr/bin/env bash
# The main job: set up .venv, then the offline end-to-end demo (build, phase 2, phase 3, phase 4, card,
# reload through the Auto classes, answer a question). Output in demo_out/ unless a folder is given.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/tinyvlm demo --output "${1:-demo_out}"
