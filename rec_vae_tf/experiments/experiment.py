"""The main job: RME against the VAE baseline on the same data, decoder and budget.

For each method the run trains (or resumes) in `<workdir>/<method>/`, selects
the checkpoint with the best validation ELBO, evaluates it on the test set
(importance-sampled log p(x) with the same K for every method), and then

  * prints a comparison table and writes `<workdir>/results.json` (one row per
    method) and `<workdir>/results.md`;
  * draws samples.png, reconstructions.png, training_curves.png, weights.png;
  * exports the RME inference network as a SavedModel under
    `<workdir>/export/rme/<version>/`.

Finished trainings are not repeated, and an evaluation already written for the
same checkpoint, K and test set is reused, so re-running is cheap.
"""

import json
import os
import platform
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from rec_vae_tf.models import builders
from rec_vae_tf import config as config_lib
from rec_vae_tf import methods
from rec_vae_tf.data import pipeline as data_lib
from rec_vae_tf.serving import export as export_lib
from rec_vae_tf.evaluation import likelihood
from rec_vae_tf.models import likelihoods
from rec_vae_tf.experiments import plots
from rec_vae_tf.training import trainer as trainer_lib

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


def device_description() -> str:
  gpus = tf.config.list_physical_devices('GPU')
  if gpus:
    return f'{len(gpus)} GPU(s): ' + ', '.join(
        tf.config.experimental.get_device_details(g).get('device_name', g.name) for g in gpus)
  return f'CPU ({os.cpu_count()} cores, {platform.machine()})'


def _evaluate_cached(run_dir, tr, cfg, dataset, num_samples, test_count, eval_seed, log):
  path = tr.best_manager.latest_checkpoint
  cache = os.path.join(run_dir, f'eval_{os.path.basename(path)}_K{num_samples}_n{test_count}_s{eval_seed}.json')
  if os.path.exists(cache):
    with open(cache) as f:
      log(f'reusing {cache}')
      return json.load(f)
  log(f'evaluating {path} on {test_count} test images, K={num_samples}')
  # savae / vae_svi: proposal, ELBO and encoder time use the refined posterior.
  result = likelihood.evaluate(tr.method, dataset, tr.num_active.numpy(),
                               num_samples=num_samples, chunk=cfg.eval_chunk, seed=eval_seed,
                               xla=cfg.xla, log=log)
  config_lib.write_json_atomic(cache, result)
  return result


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
  bits = any('test_bits_per_dim' in r for r in rows)
  head = ('| method | M | test log p(x) | ' + ('bits/dim | ' if bits else '') +
          'K | test ELBO | parameters | train s | s/epoch | encoder ms/batch | weight entropy |\n'
          '|---|---|---|' + ('---|' if bits else '') + '---|---|---|---|---|---|---|\n')
  lines = []
  for r in rows:
    lines.append(
        f'| {DISPLAY_NAMES.get(r["method"], r["method"])} | {r["num_components"]} | {r["test_log_likelihood"]:.2f} | '
        + (f'{r["test_bits_per_dim"]:.3f} | ' if bits else '') +
        f'{r["num_importance_samples"]} | {r["test_elbo"]:.2f} | {r["num_parameters"]:,} | '
        f'{r["train_seconds"]:.0f} | {r["seconds_per_epoch"]:.1f} | '
        f'{r["encoder_ms_per_batch"]:.2f} | {r["weight_entropy"]:.3f} |')
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
  trainer_lib.check_workdir(workdir)
  rows, trainers, histories, splits = [], {}, {}, None
  for cfg in cfgs:
    run_dir = os.path.join(workdir, cfg.method)
    result = trainer_lib.train(cfg, run_dir, load_data=load_data, make_networks=make_networks,
                               log=lambda s, m=cfg.method: log(f'[{m}] {s}'))
    splits = result.splits
    test = splits.test[:test_examples] if test_examples else splits.test
    dataset = data_lib.make_eval_dataset(test, batch_size=cfg.eval_batch_size, seed=eval_seed,
                                         binarization=cfg.binarization)
    tr = result.trainer
    ev = _evaluate_cached(run_dir, tr, cfg, dataset, num_importance_samples, len(test),
                          eval_seed, lambda s, m=cfg.method: log(f'[{m}] {s}'))
    epochs_done = max(len(result.history), 1)
    # Colour data is compared in bits per dimension as well (nats stay the headline).
    bits = ({'test_bits_per_dim': likelihoods.bits_per_dim(ev['test_log_likelihood'],
                                                           test.shape[1])}
            if builders.is_colour(cfg) else {})
    rows.append({
        'method': cfg.method,
        'num_components': cfg.num_components,
        'active_components': int(tr.num_active.numpy()),
        'test_log_likelihood': ev['test_log_likelihood'],
        **bits,
        'num_importance_samples': ev['num_importance_samples'],
        'test_elbo': ev['test_elbo'],
        'component_elbo': ev['component_elbo'],
        'mixture_weights': ev['mixture_weights'],
        'weight_entropy': ev['weight_entropy'],
        'num_test_examples': ev['num_examples'],
        'num_parameters': tr.num_parameters(),
        'num_encoder_parameters': tr.num_parameters(encoder_only=True),
        'train_seconds': result.train_seconds,
        'seconds_per_epoch': result.train_seconds / epochs_done,
        'epochs': cfg.epochs,
        'selected_step': int(tr._best_step.numpy()),  # pylint: disable=protected-access
        'best_validation_elbo': float(tr.best_validation.numpy()),
        'encoder_ms_per_batch': ev['encoder_ms_per_batch'],
        'eval_batch_size': cfg.eval_batch_size,
        'device': device_description(),
        'config': cfg.to_dict(),
    })
    trainers[cfg.method] = tr
    histories[cfg.method] = result.history

  config_lib.write_json_atomic(os.path.join(workdir, RESULTS_FILE), rows)
  table = format_table(rows)
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(table)
  log('\n' + table)

  # Pictures.
  x = data_lib.make_eval_dataset(splits.test[:16], batch_size=16, seed=eval_seed,
                                 binarization=base.binarization)
  x = next(iter(x))
  recon = {'data': x.numpy()}
  samples = {}
  for method, tr in trainers.items():
    recon[method] = _reconstructions(tr, x, eval_seed)
    samples[method] = _samples(tr, 32, tr.cfg.latent_dim, eval_seed)
  image_shape = builders.spec(base).image_shape
  if int(np.prod(image_shape)) == splits.test.shape[1]:  # not for injected odd-sized data
    x_max = 255.0 if builders.is_colour(base) else 1.0
    plots.save_images(recon, os.path.join(workdir, 'reconstructions.png'),
                      'test images and reconstructions (decoder mean at z ~ Q(z|x))',
                      image_shape=image_shape, x_max=x_max)
    plots.save_images(samples, os.path.join(workdir, 'samples.png'),
                      'samples: decoder mean at z ~ p(z)', image_shape=image_shape, x_max=x_max)
  plots.save_training_curves(histories, os.path.join(workdir, 'training_curves.png'))
  plots.save_weights([r['method'] for r in rows], [r['mixture_weights'] for r in rows],
                     os.path.join(workdir, 'weights.png'))

  if export and 'rme' in trainers:
    tr = trainers['rme']
    module = export_lib.InferenceModule(tr.method, int(tr.num_active.numpy()),
                                        num_pixels=splits.test.shape[1], seed=eval_seed)
    path = export_lib.export_saved_model(
        module, os.path.join(workdir, 'export', 'rme'),
        extra_summary={'checkpoint': tr.best_manager.latest_checkpoint, 'method': 'rme'})
    log(f'exported the RME inference network to {path}')
  return rows
