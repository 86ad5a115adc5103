#!/usr/bin/env bash
# Set-up from nothing but Python: .venv with the newest transformers 5.x and every extra the tests need,
# and with --with-older also the older versions the package supports: .venv-457 (4.57.x, the last 4.x)
# and .venv-522 (5.22.x, the last release before 5.23 renamed gradient_checkpointing_enable and 5.24 the
# cache argument, with the oldest PEFT, accelerate and datasets that pyproject.toml accepts). Torch is
# pinned to the CPU wheel through .ci/constraints.txt (the package itself only asks for a range).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

make_venv() {
    local dir=$1
    shift
    [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
    "$dir/bin/pip" install -q --disable-pip-version-check -c .ci/constraints.txt torch
    "$dir/bin/pip" install -q --disable-pip-version-check -c .ci/constraints.txt -e ".[train,dev]" "$@"
}

make_venv .venv "transformers>=5,<6" "bitsandbytes>=0.45"
if [ "${1:-}" = "--with-older" ]; then
    make_venv .venv-457 "transformers>=4.57,<4.58"
    # keep these pins equal to the train extra's lower bounds
    make_venv .venv-522 "transformers>=5.22,<5.23" "peft==0.18.0" "accelerate==1.6.0" "datasets==3.0.2" \
        "bitsandbytes>=0.45"
fi
