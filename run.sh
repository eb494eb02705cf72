#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, prepare real MNIST offline
# (cached in data/mnist), train RME and the VAE baseline, evaluate, compare,
# plot and export. Arguments go to launch/main.py (e.g. --workdir=runs/mine).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/setup_venv.sh
DATA_DIR=data/mnist
for arg in "$@"; do
  case "$arg" in --data_dir=*) DATA_DIR="${arg#--data_dir=}" ;; esac
done
python -m launch.prepare_data --data_dir="$DATA_DIR"
exec python -m launch.main --data_dir="$DATA_DIR" "$@"
