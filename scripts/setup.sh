#!/usr/bin/env bash
# Set-up from nothing but Python: .venv with transformers 5.x and every extra the tests need, and with
# --with-457 also .venv-457 with transformers 4.57.x for the compatibility subset. Torch is pinned to
# the CPU wheel through .ci/constraints.txt (the package itself only asks for a range).
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
if [ "${1:-}" = "--with-457" ]; then
    make_venv .venv-457 "transformers>=4.57,<4.58"
fi
