#!/usr/bin/env bash
# Run the Bazel test suite offline with Debian's bazel-bootstrap (Bazel 4.2.3).
# Expects the project venv at ./.venv (created by ./test.sh). Extra arguments
# are passed to `bazel test` (default target pattern: //...). With --build_all
# first, every target (libraries, launchers, tests) is built before the tests run.
set -uo pipefail
cd "$(dirname "$0")/.."

if ! command -v bazel >/dev/null 2>&1; then
  echo "bazel not found; installing bazel-bootstrap" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq bazel-bootstrap || exit 1
fi

if [ ! -x .venv/bin/python3 ]; then
  echo "error: $(pwd)/.venv/bin/python3 not found; run ./test.sh first" >&2
  exit 1
fi

# .bazelrc passes PATH to tests, so Bazel's python3 is the venv's.
export PATH="$(pwd)/.venv/bin:${PATH}"

if [ "${1:-}" = "--build_all" ]; then
  shift
  bazel build //... || exit $?
fi
if [ "$#" -eq 0 ]; then set -- //...; fi
bazel test "$@"
exit $?
