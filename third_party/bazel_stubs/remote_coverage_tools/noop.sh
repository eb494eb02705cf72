#!/bin/sh
# No-op stand-in for Bazel's remote coverage tools.
exit 0
