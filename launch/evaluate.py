r"""Evaluates a trained run on the test set: importance-sampled log p(x) and more.

  python -m launch.evaluate --workdir=runs/rme --num_importance_samples=5000

Prints and writes <workdir>/eval_<checkpoint>_K<K>_n<images>_s<seed>.json: test log-likelihood
(importance sampling with the mixture posterior as proposal, K reported; nats
per image, and bits per dimension, printed for colour datasets), test
ELBO, per-component ELBO, mixture weights and their entropy, and the encoder's
milliseconds per batch (for savae and vae+svi the posterior, its ELBO and its
time include the refinement steps). With --strategy (README, "Distributed training") every
test batch is sharded across the replicas and the float64 sums reduced: the
same estimate up to float rounding. Cost with the small network on a 2-core CPU: about
10 s per 1000 test images at K=1000 (linear in K).
"""

import os

from absl import app
from absl import flags

from launch import common
from rec_vae_tf.training import cluster
from rec_vae_tf import config as config_lib
from rec_vae_tf import errors

flags.DEFINE_string('workdir', None, 'Run directory written by launch/train.py.')
flags.DEFINE_string('checkpoint', 'best', "'best' (validation-selected), 'latest', or a checkpoint path.")
flags.DEFINE_integer('num_importance_samples', None, 'K; default: the run config value.')
flags.DEFINE_integer('test_examples', 0, 'Evaluate only the first N test images (0: all 10,000).')
flags.DEFINE_string('data_dir', None, 'Data directory; default: the run config value.')
flags.DEFINE_integer('eval_seed', 0, 'Seed of the importance samples and the test binarization.')
flags.DEFINE_string('strategy', 'default',
                    'tf.distribute strategy that shards every test batch across replicas (README, '
                    '"Distributed training"): default, mirrored, multi_worker (every worker runs '
                    'this command with its own TF_CONFIG; the chief writes the result), tpu '
                    '(untested). The same estimate up to float rounding.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS.workdir:
    raise errors.UserError('--workdir is required')
  # One-line errors for a bad run directory or flags, before TensorFlow loads.
  cfg = config_lib.Config.load(config_lib.config_path(FLAGS.workdir))
  k = cfg.num_importance_samples if FLAGS.num_importance_samples is None else (
      FLAGS.num_importance_samples)
  if k < 1:
    raise errors.ConfigError(f'invalid flag: num_importance_samples={k}; allowed: an integer >= 1')
  if FLAGS.test_examples < 0:
    raise errors.ConfigError(f'invalid flag: test_examples={FLAGS.test_examples}; allowed: >= 0')
  common.check_data_dir(FLAGS.data_dir or cfg.data_dir, cfg.dataset)
  if FLAGS.strategy not in config_lib.STRATEGIES:
    raise errors.ConfigError(f'invalid flag: strategy={FLAGS.strategy!r}; allowed: one of '
                             f'{", ".join(config_lib.STRATEGIES)}')
  cluster.check_strategy_environment(FLAGS.strategy)
  from rec_vae_tf.training import distribute  # pylint: disable=g-import-not-at-top
  dist = distribute.get(FLAGS.strategy)  # before TensorFlow runs anything (multi_worker)
  from rec_vae_tf.models import builders  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.evaluation import likelihood  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.training import trainer  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.data import pipeline as data_lib  # pylint: disable=g-import-not-at-top
  cfg, tr, path = trainer.restore_for_evaluation(FLAGS.workdir, which=FLAGS.checkpoint,
                                                 distribution=dist)
  splits = builders.load_data_fn(cfg)(FLAGS.data_dir or cfg.data_dir)
  test = splits.test[:FLAGS.test_examples] if FLAGS.test_examples else splits.test
  dataset = data_lib.make_eval_dataset(test, batch_size=cfg.eval_batch_size, seed=FLAGS.eval_seed,
                                       binarization=cfg.binarization)
  common.log(f'evaluating {path} ({int(tr.num_active.numpy())} active components) on '
             f'{len(test)} test images with K={k}')
  # savae / vae_svi: proposal, ELBO and encoder time use the refined posterior.
  result = likelihood.evaluate(tr.method, dataset, tr.num_active.numpy(),
                               num_samples=k, chunk=cfg.eval_chunk, seed=FLAGS.eval_seed,
                               xla=cfg.xla, log=common.log,
                               strategy=dist.strategy if dist.distributed else None)
  result['checkpoint'] = path
  result['method'] = cfg.method
  name = f'eval_{os.path.basename(path)}_K{k}_n{len(test)}_s{FLAGS.eval_seed}.json'
  out = os.path.join(FLAGS.workdir, name)
  if dist.is_chief:  # under multi_worker every worker has the same result; one writes it
    config_lib.write_json_atomic(out, result)
  bits = (f' = {result["test_bits_per_dim"]:.4f} bits/dim' if builders.is_colour(cfg) else '')
  common.log(f'test log p(x) {result["test_log_likelihood"]:.3f}{bits} (K={k}), test ELBO '
             f'{result["test_elbo"]:.3f}, weights {[round(w, 3) for w in result["mixture_weights"]]}, '
             f'encoder {result["encoder_ms_per_batch"]:.2f} ms/batch; written to {out}')


if __name__ == '__main__':
  app.run(common.run(main), flags_parser=common.parse_flags)
