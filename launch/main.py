r"""The main job: RME and the VAE baseline, trained and compared on real MNIST.

  python -m launch.main --workdir=runs/default            # what ./run.sh runs
  python -m launch.main --workdir=runs/paper --epochs=1000 --num_importance_samples=5000

Both models share the decoder architecture, data (dynamically binarized MNIST,
50k train / 10k validation / 10k test), optimizer and number of epochs. Each
is selected by validation ELBO and evaluated on the full test set with the
same number K of importance samples. Writes results.json, results.md,
samples.png, reconstructions.png, training_curves.png, weights.png and the RME
SavedModel (export/rme/<version>/) into --workdir.

Default cost on a 2-core CPU: about 15 minutes (RME(M=4) ~4 s/epoch, VAE ~2
s/epoch for 40 epochs each, then importance sampling with K=1000 over 2 x
10,000 test images). Re-running resumes; finished parts are not repeated.
"""

from absl import app
from absl import flags

from launch import common

flags.DEFINE_string('workdir', 'runs/default', 'Output directory (resumed if it exists).')
flags.DEFINE_list('methods', ['rme', 'vae'], 'Methods to compare.')
flags.DEFINE_integer('test_examples', 0, 'Evaluate only the first N test images (0: all).')
flags.DEFINE_integer('eval_seed', 0, 'Seed of the test binarization and importance samples.')
common.define_config_flags()
FLAGS = flags.FLAGS

# The main job fits 20 minutes on 2 CPU cores with K=1000 importance samples;
# pass --num_importance_samples=5000 for the literature-standard estimate.
MAIN_JOB_IMPORTANCE_SAMPLES = 1000


def main(argv):
  del argv
  overrides = {}
  if not FLAGS['num_importance_samples'].present:
    overrides['num_importance_samples'] = MAIN_JOB_IMPORTANCE_SAMPLES
  if not FLAGS['method'].present:
    overrides['method'] = 'rme'
  if FLAGS.strategy == 'multi_worker':
    raise common.errors.ConfigError(
        'invalid flag: strategy=multi_worker; allowed for launch/main.py: default, mirrored, tpu '
        '(it evaluates and writes on one machine); run launch/train.py on every worker instead')
  base = common.config_from_flags(**overrides)
  if FLAGS.test_examples < 0:
    raise common.errors.ConfigError(
        f'invalid flag: test_examples={FLAGS.test_examples}; allowed: an integer >= 0')
  unknown = [m for m in FLAGS.methods if m not in common.config_lib.METHODS]
  if not FLAGS.methods or unknown:
    raise common.errors.ConfigError(
        f'invalid flag: methods={",".join(FLAGS.methods)!r}; allowed: a comma-separated list of '
        f'{", ".join(common.config_lib.METHODS)}')
  common.check_data_dir(base.data_dir, base.dataset)
  common.claim_workdir(FLAGS.workdir, base)  # writable, locked, memory bounded; before TF loads
  from rec_vae_tf.experiments import experiment  # pylint: disable=g-import-not-at-top  (TF loads after validation)
  experiment.run_comparison(
      base, FLAGS.workdir, methods=FLAGS.methods,
      num_importance_samples=base.num_importance_samples,
      test_examples=FLAGS.test_examples, eval_seed=FLAGS.eval_seed, log=common.log)


if __name__ == '__main__':
  app.run(common.run(main), flags_parser=common.parse_flags)
