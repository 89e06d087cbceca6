#!/usr/bin/env bash
# Create .venv (once) and install lowbit with the given extras. Sourced by demo.sh and test.sh.
# An environment that already holds a superset of the extras (test includes demo) is reused as is.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LOWBIT_VENV:-$ROOT/.venv}"
EXTRAS="${1:-test}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
hash="$(sha1sum "$ROOT/pyproject.toml" | cut -c1-12)"
stamp="$VENV/.lowbit-$EXTRAS-$hash"
superset=""
[ "$EXTRAS" = "demo" ] && superset="$VENV/.lowbit-test-$hash"  # the test extra includes every demo package
if [ ! -f "$stamp" ] && { [ -z "$superset" ] || [ ! -f "$superset" ]; }; then
  # The CPU build of torch first: a looser requirement would pull several GB of CUDA packages.
  "$PY" -m pip install -q "torch==2.13.0"
  "$PY" -m pip install -q "triton==3.9.0" "numpy>=2,<2.4"
  "$PY" -m pip install -q -e "$ROOT[$EXTRAS]"
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
