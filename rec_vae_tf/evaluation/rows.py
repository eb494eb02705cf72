"""One evaluation of a trained run, as one result row (the main job, the grid, launch/evaluate.py).

`evaluate_run(run_dir, ...)` evaluates a run's selected (or given) checkpoint
on a split: importance-sampled log p(x) with its standard error (and, asked
for, the stratified estimate), the ELBO, the mixture weights, the inference
time, the run's size and training cost. Every program that reports a number
writes this row, so a number means the same thing wherever it appears. The
row is cached in the run directory as
`eval_<checkpoint>_K<K>_n<images>_s<seed>[_valid][_stratified].json`
(written atomically): evaluating the same checkpoint again reads it back.
"""

import json
import math
import os
import platform
import time
from typing import Callable, Dict, Optional

from rec_vae_tf import config as config_lib

# This module loads without TensorFlow (the grid's report code reads FIELDS before
# any training); the evaluation imports it when it runs.

SPLITS = ('test', 'valid')
# The row's fields, in the order of cells.csv (the grid adds cell, variant, ablation).
FIELDS = ('method', 'num_components', 'active_components', 'seed', 'dataset', 'network',
          'split', 'log_likelihood', 'log_likelihood_se', 'log_likelihood_stratified',
          'log_likelihood_stratified_se', 'bits_per_dim', 'elbo', 'num_importance_samples',
          'num_examples', 'eval_seed', 'num_parameters', 'num_encoder_parameters',
          'train_seconds', 'seconds_per_epoch', 'epochs', 'step',
          'best_validation_elbo', 'inference_ms_per_batch', 'eval_batch_size', 'weight_entropy',
          'eval_seconds', 'checkpoint', 'device')


def device_description() -> str:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  gpus = tf.config.list_physical_devices('GPU')
  if gpus:
    return f'{len(gpus)} GPU(s): ' + ', '.join(
        tf.config.experimental.get_device_details(g).get('device_name', g.name) for g in gpus)
  return f'CPU ({os.cpu_count()} cores, {platform.machine()})'


def cache_path(run_dir: str, checkpoint: str, *, num_importance_samples: int, examples: int,
               eval_seed: int, split: str = 'test', stratified: bool = False) -> str:
  name = (f'eval_{os.path.basename(checkpoint)}_K{num_importance_samples}_n{examples}'
          f'_s{eval_seed}' + ('_valid' if split == 'valid' else '') +
          ('_stratified' if stratified else ''))
  return os.path.join(run_dir, name + '.json')


def evaluate_run(run_dir: str, trainer, *, splits, train_seconds: float, epochs_done: float,
                 num_importance_samples: int, split: str = 'test', examples: int = 0,
                 eval_seed: int = 0, stratified: bool = False, strategy=None,
                 checkpoint: Optional[str] = None, log: Optional[Callable[[str], None]] = None,
                 write: bool = True) -> Dict:
  """Evaluates `trainer`'s networks (a run restored or just trained) on a split: one row.

  Args:
    run_dir: the run directory (the cache file goes there).
    trainer: a `training.trainer.Trainer` in the state to evaluate.
    splits: the run's data (`data.sources.Splits`).
    train_seconds, epochs_done: the training cost (history.json's epochs).
    num_importance_samples: K.
    split: 'test' or 'valid'; examples: the first N images of it (0: all).
    eval_seed: seed of the split's binarization and the importance samples.
    stratified: also the stratified estimate (K / M per component).
    strategy: None, or the tf.distribute strategy the networks live under.
    checkpoint: the evaluated checkpoint (default: the selected one, best/).
    log: progress lines.
    write: write the row to the cache file (False: a non-chief worker).
  Returns:
    The row (FIELDS, plus component_elbo, mixture_weights, run_dir and config).
  """
  from rec_vae_tf.data import pipeline as data_lib  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.evaluation import likelihood  # pylint: disable=g-import-not-at-top
  cfg = trainer.cfg
  checkpoint = checkpoint or trainer.best_manager.latest_checkpoint or '(none)'
  images = splits.test if split == 'test' else splits.valid
  images = images[:examples] if examples else images
  cache = cache_path(run_dir, checkpoint, num_importance_samples=num_importance_samples,
                     examples=len(images), eval_seed=eval_seed, split=split,
                     stratified=stratified)
  cached = _read_row(cache)
  if cached is not None:
    if log:
      log(f'reusing {cache}')
    return cached
  if log:
    log(f'evaluating {checkpoint} ({int(trainer.num_active.numpy())} active components) on '
        f'{len(images)} {split} images, K={num_importance_samples}')
  dataset = data_lib.make_eval_dataset(images, batch_size=cfg.eval_batch_size, seed=eval_seed,
                                       binarization=cfg.binarization)
  start = time.perf_counter()
  ev = likelihood.evaluate(trainer.method, dataset, trainer.num_active.numpy(),
                           num_samples=num_importance_samples, chunk=cfg.eval_chunk,
                           seed=eval_seed, xla=cfg.xla, log=log, strategy=strategy,
                           stratified=stratified)
  row = _row(cfg, trainer, ev, split=split, eval_seed=eval_seed, checkpoint=checkpoint,
             train_seconds=train_seconds, epochs_done=epochs_done,
             eval_seconds=time.perf_counter() - start)
  row['run_dir'] = os.path.abspath(run_dir)
  if write:
    config_lib.write_json_atomic(cache, row)
  return row


def _row(cfg, trainer, ev, *, split, eval_seed, checkpoint, train_seconds, epochs_done,
         eval_seconds) -> Dict:
  from rec_vae_tf.models import builders  # pylint: disable=g-import-not-at-top
  colour = builders.is_colour(cfg)
  # In memory after training; a checkpoint restored for evaluation does not hold it.
  best = float(trainer.best_validation.numpy())
  best = best if math.isfinite(best) else None
  return {
      'method': cfg.method,
      'num_components': cfg.num_components,
      'active_components': int(trainer.num_active.numpy()),
      'seed': cfg.seed,
      'dataset': cfg.dataset,
      'network': cfg.network,
      'split': split,
      'log_likelihood': ev['test_log_likelihood'],
      'log_likelihood_se': ev['test_log_likelihood_se'],
      'log_likelihood_stratified': ev.get('test_log_likelihood_stratified'),
      'log_likelihood_stratified_se': ev.get('test_log_likelihood_stratified_se'),
      # Colour data is compared in bits per dimension as well (nats stay the headline).
      'bits_per_dim': ev['test_bits_per_dim'] if colour else None,
      'elbo': ev['test_elbo'],
      'component_elbo': ev['component_elbo'],
      'mixture_weights': ev['mixture_weights'],
      'weight_entropy': ev['weight_entropy'],
      'num_importance_samples': ev['num_importance_samples'],
      'num_examples': ev['num_examples'],
      'eval_seed': eval_seed,
      'num_parameters': trainer.num_parameters(),
      'num_encoder_parameters': trainer.num_parameters(encoder_only=True),
      'train_seconds': train_seconds,
      'seconds_per_epoch': train_seconds / max(epochs_done, 1),
      'epochs': cfg.epochs,
      'step': _checkpoint_step(checkpoint),  # the evaluated checkpoint's training step
      'best_validation_elbo': best if cfg.selection == 'elbo' else None,
      # Not in FIELDS (a new field would invalidate every stored row): only in the JSON.
      'best_validation_log_likelihood': best if cfg.selection == 'log_likelihood' else None,
      'inference_ms_per_batch': ev['encoder_ms_per_batch'],
      'eval_batch_size': cfg.eval_batch_size,
      'eval_seconds': eval_seconds,
      'checkpoint': checkpoint,
      'device': device_description(),
      'config': cfg.to_dict(),
  }


def training_cost(run_dir: str):
  """(training seconds, epochs) from a run's history.json; (0.0, 0) if it has none.

  Raises:
    UserError: history.json is there but unreadable, or edited into another
      shape (`runstate.read_history`): a row must not report a made-up cost.
  """
  # Loads TensorFlow: callers (launch/evaluate.py) have loaded it already.
  from rec_vae_tf.training import runstate  # pylint: disable=g-import-not-at-top
  history = runstate.read_history(os.path.join(run_dir, runstate.HISTORY_FILE))
  return float(sum(h.get('epoch_seconds', 0.0) for h in history)), len(history)


def _checkpoint_step(checkpoint: str) -> Optional[int]:
  tail = os.path.basename(checkpoint).rsplit('-', 1)[-1]
  return int(tail) if tail.isdigit() else None


def _read_row(path: str) -> Optional[Dict]:
  """A cached row, or None (missing, unreadable, or written before the row had its fields)."""
  try:
    with open(path) as f:
      row = json.load(f)
  except (OSError, ValueError):
    return None
  return row if isinstance(row, dict) and set(FIELDS) <= set(row) else None
