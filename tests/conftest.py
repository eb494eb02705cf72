"""Shared test set-up: quiet TF logs, tiny pairwise-distinct sizes."""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# Tiny, pairwise-distinct sizes so that an axis mix-up fails loudly.
S, B, M, D = 2, 3, 4, 5
