#!/usr/bin/env bash
# The test command: installs everything (scripts/setup.sh), lints, runs the whole suite under
# transformers 5.x (with the cross-version checks against 4.57), the compatibility subset under 4.57,
# and the suite but the benchmarks' tests (the benchmarks are not shipped) under 5.22 with the oldest
# PEFT, accelerate and datasets the package accepts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-older
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check .
.venv/bin/ruff format --check .
TINYVLM_OTHER_PYTHON="$PWD/.venv-457/bin/python" .venv/bin/python -m pytest -q "$@"
.venv-457/bin/python -m pytest -q -p no:cacheprovider -m "compat and not slow and not gpu" "$@"
.venv-522/bin/python -m pytest -q -p no:cacheprovider --ignore=tests/test_benchmarks.py "$@"
