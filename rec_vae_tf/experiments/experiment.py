"""The main job: RME against the VAE baseline on the same data, decoder and budget.

For each method the run trains (or resumes) in `<workdir>/<method>/`, selects
the checkpoint with the best validation ELBO (Config.selection), evaluates it on the test set
(importance-sampled log p(x) with the same K for every method), and then

  * prints a comparison table and writes `<workdir>/results.json` (one row per
    method) and `<workdir>/results.md`;
  * draws samples.png, reconstructions.png, training_curves.png, weights.png;
  * exports the RME inference network as a SavedModel under
    `<workdir>/export/rme/<version>/`.

Each row is `evaluation.rows.evaluate_run`'s, the schema the grid and
launch/evaluate.py write too. Finished trainings are not repeated, and an
evaluation already written for the same checkpoint, K and test set is reused,
so re-running is cheap.
"""

import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from rec_vae_tf import config as config_lib
from rec_vae_tf import methods
from rec_vae_tf.models import builders
from rec_vae_tf.data import pipeline as data_lib
from rec_vae_tf.serving import export as export_lib
from rec_vae_tf.evaluation import rows as rows_lib
from rec_vae_tf.experiments import plots
from rec_vae_tf.training import loop as loop_lib
from rec_vae_tf.training import runstate
from rec_vae_tf.training import workdir_lock

RESULTS_FILE = 'results.json'


def method_config(base: config_lib.Config, method: str) -> config_lib.Config:
  """The base config for `method`, all else equal (validated).

  One-encoder methods get M = 1, mixture its simultaneous schedule, and iwae
  the sample budget of the mixture methods (num_components samples per step,
  one decoder pass each): `methods.Spec`.
  """
  values = config_lib.method_defaults(method, base.num_components)
  if methods.SPECS[method].takes_component_samples:
    values['num_train_samples'] = base.num_components * base.num_train_samples
  return base.replace(**values).validate()


def posterior_sample(tr, x, seed):
  """One z ~ q(z|x) per image from the run's own posterior (`Method.sample`): [B, D]."""
  return tr.method.sample(tr.method.posterior(x, tr.num_active), tf.constant([seed, 1]))


def decoder_mean(decoder, z):
  """The decoder's picture of p(x|z), [..., P]: `decoder.mean(z)` where it has one
  (conv decoders: Bernoulli means, or pixel values 0..255 for colour), else the
  sigmoid of the dense Bernoulli decoder's logits."""
  if hasattr(decoder, 'mean'):
    return decoder.mean(z)
  return tf.sigmoid(decoder(z))


def _reconstructions(tr, x, seed):
  return decoder_mean(tr.decoder, posterior_sample(tr, x, seed)).numpy()


def _samples(tr, count, latent_dim, seed):
  z = tf.random.stateless_normal([count, latent_dim], seed=[seed, 2])
  return decoder_mean(tr.decoder, z).numpy()


# How the table prints a method whose config name is not its usual name.
DISPLAY_NAMES = {'vae_svi': 'vae+svi'}


def format_table(rows: List[Dict]) -> str:
  """Markdown table of the rows' headline numbers (bits/dim too when a row has them: colour data)."""
  bits = any(r.get('bits_per_dim') is not None for r in rows)
  head = ('| method | M | test log p(x) | ' + ('bits/dim | ' if bits else '') +
          'K | test ELBO | parameters | train s | s/epoch | encoder ms/batch | weight entropy |\n'
          '|---|---|---|' + ('---|' if bits else '') + '---|---|---|---|---|---|---|\n')
  lines = []
  for r in rows:
    lines.append(
        f'| {DISPLAY_NAMES.get(r["method"], r["method"])} | {r["num_components"]} | {r["log_likelihood"]:.2f} | '
        + (f'{r["bits_per_dim"]:.3f} | ' if bits else '') +
        f'{r["num_importance_samples"]} | {r["elbo"]:.2f} | {r["num_parameters"]:,} | '
        f'{r["train_seconds"]:.0f} | {r["seconds_per_epoch"]:.1f} | '
        f'{r["inference_ms_per_batch"]:.2f} | {r["weight_entropy"]:.3f} |')
  return head + '\n'.join(lines) + '\n'


def run_comparison(base: config_lib.Config, workdir: str, *,
                   methods: Sequence[str] = ('rme', 'vae'),
                   num_importance_samples: int,
                   test_examples: int = 0,
                   eval_seed: int = 0,
                   export: bool = True,
                   load_data: Optional[Callable] = None,
                   make_networks: Optional[Callable] = None,
                   log: Callable[[str], None] = print) -> List[Dict]:
  """Trains, evaluates and compares `methods`; returns the result rows.

  Args:
    base: the shared config (method-specific fields are set per method).
    workdir: output directory.
    methods: methods to run, in order.
    num_importance_samples: K for every method's test log-likelihood.
    test_examples: evaluate the first N test images (0: all).
    eval_seed: seed of the test binarization and importance samples.
    export: export the RME SavedModel.
    load_data, make_networks: injectable for tests; None: what base.dataset and
      base.network select (`rec_vae_tf.models.builders`).
    log: progress lines.
  """
  cfgs = [method_config(base, m) for m in methods]  # validate everything first
  runstate.check_workdir(workdir)
  with workdir_lock.hold(workdir):  # one writer (training/workdir_lock.py)
    rows, results = [], {}
    for cfg in cfgs:
      run_dir = os.path.join(workdir, cfg.method)
      method_log = lambda s, m=cfg.method: log(f'[{m}] {s}')
      result = loop_lib.train(cfg, run_dir, load_data=load_data, make_networks=make_networks,
                              log=method_log)
      rows.append(rows_lib.evaluate_run(
          run_dir, result.trainer, splits=result.splits, train_seconds=result.train_seconds,
          epochs_done=len(result.history), num_importance_samples=num_importance_samples,
          examples=test_examples, eval_seed=eval_seed, log=method_log))
      results[cfg.method] = result
    config_lib.write_json_atomic(os.path.join(workdir, RESULTS_FILE), rows)
    table = format_table(rows)
    config_lib.write_text_atomic(os.path.join(workdir, 'results.md'), table)
    log('\n' + table)
    _save_pictures(base, workdir, results, rows, eval_seed)
    if export and 'rme' in results:
      _export(results['rme'], workdir, eval_seed, log)
    return rows


def _save_pictures(base, workdir, results, rows, eval_seed) -> None:
  """reconstructions.png, samples.png, training_curves.png and weights.png of the methods."""
  splits = next(iter(results.values())).splits
  x = data_lib.make_eval_dataset(splits.test[:16], batch_size=16, seed=eval_seed,
                                 binarization=base.binarization)
  x = next(iter(x))
  recon = {'data': x.numpy()}
  samples = {}
  for method, result in results.items():
    recon[method] = _reconstructions(result.trainer, x, eval_seed)
    samples[method] = _samples(result.trainer, 32, result.trainer.cfg.latent_dim, eval_seed)
  image_shape = builders.spec(base).image_shape
  if int(np.prod(image_shape)) == splits.test.shape[1]:  # not for injected odd-sized data
    x_max = 255.0 if builders.is_colour(base) else 1.0
    plots.save_images(recon, os.path.join(workdir, 'reconstructions.png'),
                      'test images and reconstructions (decoder mean at z ~ Q(z|x))',
                      image_shape=image_shape, x_max=x_max)
    plots.save_images(samples, os.path.join(workdir, 'samples.png'),
                      'samples: decoder mean at z ~ p(z)', image_shape=image_shape, x_max=x_max)
  plots.save_training_curves({m: r.history for m, r in results.items()},
                             os.path.join(workdir, 'training_curves.png'))
  plots.save_weights([r['method'] for r in rows], [r['mixture_weights'] for r in rows],
                     os.path.join(workdir, 'weights.png'))


def _export(result, workdir, eval_seed, log) -> None:
  """The RME SavedModel under <workdir>/export/rme/<version>/."""
  tr = result.trainer
  module = export_lib.InferenceModule(tr.method, int(tr.num_active.numpy()),
                                      num_pixels=result.splits.test.shape[1], seed=eval_seed)
  path = export_lib.export_saved_model(
      module, os.path.join(workdir, 'export', 'rme'),
      extra_summary={'checkpoint': tr.best_manager.latest_checkpoint, 'method': 'rme'})
  log(f'exported the RME inference network to {path}')
