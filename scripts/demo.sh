#!/usr/bin/env bash
# Set up (if needed) and run the main job: quantize the embedded MiniLM with every scheme.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup.sh" demo
cd "$ROOT"
exec python -m lowbit demo "$@"
