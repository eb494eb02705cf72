r"""Evaluates a trained run on the test set: importance-sampled log p(x) and more.

  python -m launch.evaluate --workdir=runs/rme --num_importance_samples=5000

Prints and writes <workdir>/eval_<checkpoint>_K<K>_n<images>_s<seed>[_stratified].json,
the result row every program writes (`rec_vae_tf.evaluation.rows`): test
log-likelihood (importance sampling with the run's own posterior as proposal,
K reported; nats per image with its standard error, and bits per dimension for
colour datasets; with --stratified also the stratified estimate), test ELBO,
per-component ELBO, mixture weights and their entropy, the inference pass's
milliseconds per batch (for savae and vae+svi the posterior, its ELBO and its
time include the refinement steps), parameters and training cost. The same
checkpoint, K, images and seed evaluated before are read back from that file.
It reads checkpoints and writes only that file, atomically, so it may run
beside a training of the same run. With --strategy (README, "Distributed training") every
test batch is sharded across the replicas and the float64 sums reduced: the
same estimate up to float rounding. Cost with the small network on a 2-core CPU: about
10 s per 1000 test images at K=1000 (linear in K).
"""

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
flags.DEFINE_boolean('stratified', False,
                     'Also the stratified estimate: K / n samples from each of the n active '
                     'components, weighted by alpha(x) (unbiased, lower variance; one device).')
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
  from rec_vae_tf.evaluation import rows  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.models import builders  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.training import trainer  # pylint: disable=g-import-not-at-top
  # The run's history and the data first: a damaged file is refused before the networks are built.
  train_seconds, epochs = rows.training_cost(FLAGS.workdir)
  splits = builders.load_data_fn(cfg, log=common.log)(FLAGS.data_dir or cfg.data_dir)
  cfg, tr, path = trainer.restore_for_evaluation(FLAGS.workdir, which=FLAGS.checkpoint,
                                                 distribution=dist)
  # savae / vae_svi: proposal, ELBO and encoder time use the refined posterior.
  row = rows.evaluate_run(
      FLAGS.workdir, tr, splits=splits, train_seconds=train_seconds, epochs_done=epochs,
      num_importance_samples=k, examples=FLAGS.test_examples, eval_seed=FLAGS.eval_seed,
      stratified=FLAGS.stratified, strategy=dist.strategy if dist.distributed else None,
      checkpoint=path, log=common.log,
      write=dist.is_chief)  # under multi_worker every worker has the same result; one writes it
  out = rows.cache_path(FLAGS.workdir, path, num_importance_samples=k,
                        examples=row['num_examples'], eval_seed=FLAGS.eval_seed,
                        stratified=FLAGS.stratified)
  bits = f' = {row["bits_per_dim"]:.4f} bits/dim' if row['bits_per_dim'] is not None else ''
  strat = (f', stratified {row["log_likelihood_stratified"]:.3f} ± '
           f'{row["log_likelihood_stratified_se"]:.3f}' if FLAGS.stratified else '')
  common.log(f'test log p(x) {row["log_likelihood"]:.3f} ± {row["log_likelihood_se"]:.3f} (s.e.)'
             f'{bits} (K={k}){strat}, test ELBO {row["elbo"]:.3f}, weights '
             f'{[round(w, 3) for w in row["mixture_weights"]]}, encoder '
             f'{row["inference_ms_per_batch"]:.2f} ms/batch; written to {out}')

if __name__ == '__main__':
  app.run(common.run(main), flags_parser=common.parse_flags)
