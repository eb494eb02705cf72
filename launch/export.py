r"""Exports a trained run for TF Serving: a versioned SavedModel, warmup and model config.

  python -m launch.export --workdir=runs/default/rme --export_dir=exports

Writes <export_dir>/<model_name>/<next integer version>/ (<model_name>: the
run's method unless given; built in a temporary
`.incomplete-*` directory, verified through the TF1 session loader that TF
Serving uses, then renamed into place) with the signatures

  serving_default, encode: images [B, 784] float32 in [0, 1]
      -> log_weights [B, M], loc [B, M, D], scale [B, M, D]
  log_likelihood: images -> log_likelihood [B] (importance sampling, K fixed
      here by --num_importance_samples, stateless seed: deterministic)
  reconstruct: images -> bernoulli_mean [B, 784]
  decode: latents [B, D] -> bernoulli_mean [B, 784]
  sample: count (int32 scalar in [1, 10000]) -> bernoulli_mean, latents

plus assets.extra/tf_serving_warmup_requests (one PredictRequest per
signature) and assets.extra/export_summary.json, and adds the model to
<export_dir>/models.config for `tensorflow_model_server --model_config_file`.
Prints the summary, which names the posterior served. Takes a few seconds with
the small network. One export at a time per model base: a second is refused in
one line while the first runs (rec_vae_tf/training/workdir_lock.py).
"""

import json
import os
import re

from absl import app
from absl import flags

from launch import common
from rec_vae_tf import config as config_lib
from rec_vae_tf import errors

flags.DEFINE_string('workdir', None, 'Run directory written by launch/train.py.')
flags.DEFINE_string('export_dir', None,
                    'Export base directory (TF Serving model base): versions go in '
                    '<export_dir>/<model_name>/<N>/, the model config in <export_dir>/models.config.')
flags.DEFINE_string('model_name', None, 'Model name: the directory under --export_dir and the '
                    'name clients request (default: the run\'s method, e.g. rme or savae).')
flags.DEFINE_string('checkpoint', 'best', "'best' (validation-selected), 'latest', or a checkpoint path.")
flags.DEFINE_integer('num_importance_samples', 1000,
                     'K of the log_likelihood signature, fixed in the graph (cost per request: '
                     'K decoder passes per image; evaluate.py reports K=5000 numbers).')
flags.DEFINE_integer('importance_chunk', 100,
                     'Importance samples drawn at once inside the graph (bounds request memory).')
flags.DEFINE_integer('export_seed', 0, 'Stateless seed of the sampling signatures.')
FLAGS = flags.FLAGS

_MAX_K = 1_000_000


def _validate() -> str:
  """One-line errors for bad flags, before TensorFlow loads; returns the model name."""
  if not FLAGS.workdir or not FLAGS.export_dir:
    raise errors.UserError('--workdir and --export_dir are required')
  name = FLAGS.model_name
  if name is not None and (not re.fullmatch(r'[A-Za-z0-9_.\-]+', name) or name.isdigit() or
                           name.startswith('.')):
    raise errors.ConfigError(
        f'invalid flag: model_name={name!r}; allowed: letters, digits, _ . - (not all digits, '
        'not starting with a dot)')
  if not 1 <= FLAGS.num_importance_samples <= _MAX_K:
    raise errors.ConfigError(f'invalid flag: num_importance_samples={FLAGS.num_importance_samples}'
                             f'; allowed: 1 .. {_MAX_K}')
  if FLAGS.importance_chunk < 1:
    raise errors.ConfigError(f'invalid flag: importance_chunk={FLAGS.importance_chunk}; '
                             'allowed: an integer >= 1')
  if not 0 <= FLAGS.export_seed < 2**31 - 1:
    raise errors.ConfigError(f'invalid flag: export_seed={FLAGS.export_seed}; '
                             'allowed: 0 .. 2^31 - 2')
  if os.path.exists(FLAGS.export_dir) and not os.path.isdir(FLAGS.export_dir):
    raise errors.UserError(f'--export_dir={FLAGS.export_dir} exists and is not a directory')
  cfg = config_lib.Config.load(config_lib.config_path(FLAGS.workdir))  # one line if not a run
  return name if name is not None else cfg.method  # clients ask for the method by name


def _describe(summary) -> str:
  """The export summary as a few readable lines."""
  lines = [f'  source checkpoint {summary["checkpoint"]} ({summary["method"]}, '
           f'{summary["num_active"]} of {summary["num_components"]} components active, '
           f'{summary["num_parameters"]:,} parameters)',
           f'  posterior served: {summary["served_posterior"]}',
           f'  log_likelihood: K={summary["num_importance_samples"]} importance samples '
           f'(chunks of {summary["importance_chunk"]}), seed {summary["seed"]}',
           '  signatures:']
  def tensors(infos):
    return ', '.join(f'{k} {v["dtype"]}{v["shape"]}' for k, v in infos.items())
  for name, sig in summary['signatures'].items():
    lines.append(f'    {name}: {tensors(sig["inputs"])} -> {tensors(sig["outputs"])}')
  lines.append(f'  session-loader check: warmup requests of every signature match the eager '
               f'model (max |diff| {summary["max_abs_deviation_from_eager"]:.2g})')
  return '\n'.join(lines).replace('None', '?')


def main(argv):
  del argv
  model_name = _validate()
  model_dir = os.path.join(os.path.abspath(FLAGS.export_dir), model_name)
  base_created = not os.path.exists(FLAGS.export_dir)
  # One exporter per model base (versions are numbered from what is there).
  common.claim_workdir(model_dir, flag='--export_dir or --model_name', what='export')
  if base_created:
    common.remove_on_failure(FLAGS.export_dir)  # after model_dir: removed in that order
  from rec_vae_tf.training import trainer  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.serving import export as export_lib  # pylint: disable=g-import-not-at-top
  cfg, tr, path = trainer.restore_for_evaluation(FLAGS.workdir, which=FLAGS.checkpoint)
  module = export_lib.InferenceModule(
      tr.method, int(tr.num_active.numpy()), num_pixels=tr.decoder.num_pixels,
      seed=FLAGS.export_seed, num_importance_samples=FLAGS.num_importance_samples,
      chunk=FLAGS.importance_chunk)
  extra = {'checkpoint': os.path.abspath(path), 'workdir': os.path.abspath(FLAGS.workdir),
           'method': cfg.method, 'step': int(tr.step.numpy())}
  try:
    out = export_lib.export_saved_model(module, model_dir, extra_summary=extra)
  except export_lib.ExportError as e:
    raise errors.UserError(f'export failed, nothing was published: {e}') from e
  except OSError as e:
    raise errors.UserError(f'cannot write {model_dir}: {e}') from e
  summary = export_lib.read_summary(out)
  summary_path = os.path.join(out, 'assets.extra', export_lib.SUMMARY_FILE)
  common.log(f'exported version {summary["version"]} of model {model_name!r} to {out}')
  common.log(_describe(summary))
  common.log(f'  warmup: {os.path.join(out, "assets.extra", export_lib.WARMUP_FILE)}')
  common.log(f'  summary: {summary_path}')
  common.log(f'  model config: {os.path.join(os.path.dirname(model_dir), "models.config")}')
  common.log(json.dumps({k: v for k, v in summary.items() if k != 'signatures'}))


if __name__ == '__main__':
  app.run(common.run(main), flags_parser=common.parse_flags)
