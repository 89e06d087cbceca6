#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: reference, interpreter kernels, compile gate, CLI.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh" test
cd "$ROOT"
# Keep compiled kernels within this run so the compile gate and tests share them.
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$ROOT/.triton-cache}"
export TRITON_DEFAULT_FP_FUSION="${TRITON_DEFAULT_FP_FUSION:-1}"
# One pytest worker per core (pytest-xdist): the interpreter tests are CPU-bound Python, and the
# compile gate's ptxas runs are separate processes. LOWBIT_TEST_WORKERS=0 runs in this process.
set +e
python -m pytest -q -ra -n "${LOWBIT_TEST_WORKERS:-auto}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit "$rc"
