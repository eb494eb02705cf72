#!/usr/bin/env bash
# The test suite on a fresh machine: set up .venv, then one pytest process.
# Extra arguments go to pytest (e.g. ./test.sh -k posterior).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_venv.sh
exec python -m pytest tests "$@"
