"""Runs one pytest file as a Bazel py_test: `bazel_pytest_main.py TEST_FILE [ARGS]`.

Every py_test in //:BUILD uses this as `main` and passes its test file in
`args`, so the plain-function pytest tests (fixtures, bare asserts) run under
pytest inside Bazel's runfiles tree.
"""

import os
import sys

import pytest


def main(argv):
  if not argv:
    sys.exit("usage: bazel_pytest_main.py TEST_FILE [PYTEST_ARGS...]")
  tmp = os.environ.get("TEST_TMPDIR")
  if tmp:  # The sandbox leaves $HOME read-only.
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(tmp, "matplotlib"))
  args = [argv[0], "-q", "-p", "no:cacheprovider"] + argv[1:]
  test_filter = os.environ.get("TESTBRIDGE_TEST_ONLY")  # bazel --test_filter
  if test_filter:
    args += ["-k", test_filter]
  return int(pytest.main(args))


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
