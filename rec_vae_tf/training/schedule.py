"""The recursion schedule: how many components are active after a number of steps (no TensorFlow).

RME.md, "Schedules": under `recursive` a new component joins every
`epochs_per_component` epochs (rounded to whole steps) until all
`num_components` are active; under `simultaneous` all are active from the
start. The trainer applies it (`rec_vae_tf.training.loop`); the reports use it
to price a run's steps without its history (`rec_vae_tf.experiments.grid`).
"""
from typing import Optional

from rec_vae_tf import config as config_lib


def num_active_at(cfg: config_lib.Config, step: int, steps_per_epoch: int) -> int:
  """Active components after `step` optimisation steps under cfg's schedule."""
  if cfg.schedule == 'simultaneous':
    return cfg.num_components
  per_component = max(1, int(round(cfg.epochs_per_component * steps_per_epoch)))
  return int(min(cfg.num_components, 1 + step // per_component))


def next_activation_step(cfg: config_lib.Config, step: int, steps_per_epoch: int) -> Optional[int]:
  """First step > `step` at which the active count changes, or None."""
  if cfg.schedule == 'simultaneous' or num_active_at(cfg, step, steps_per_epoch) >= cfg.num_components:
    return None
  per_component = max(1, int(round(cfg.epochs_per_component * steps_per_epoch)))
  return (step // per_component + 1) * per_component
