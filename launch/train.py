r"""Trains one model (RME or the VAE baseline) into a run directory.

  python -m launch.train --workdir=runs/rme --method=rme --num_components=4 \
      --kl_weight=0.3 --epochs=40

Writes <workdir>/config.json, checkpoints/ (resume state), best/ (the model
selected by validation ELBO), history.json and summaries/ (TensorBoard).
Re-running the same command on an existing workdir resumes from the latest
checkpoint; a different config is refused. Cost: about 3-4 s per epoch for
RME(M=4) and 1-2 s for the VAE on a 2-core CPU with the default small network.

Other datasets and networks (README, "Datasets"):

  python -m launch.train --workdir=runs/fashion --dataset=fashion_mnist \
      --network=conv_small --data_dir=data/fashion_mnist
  python -m launch.train --workdir=runs/svhn --dataset=svhn --network=conv_small \
      --data_dir=data/tfds      # colour: discretized logistic, binarization none

Distributed (README, "Distributed training"): --strategy=mirrored trains on
every local GPU; with --strategy=multi_worker every worker runs the same
command with its own TF_CONFIG, and the chief writes the run directory:

  TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
              "task": {"type": "worker", "index": 0}}' \
      python -m launch.train --strategy=multi_worker --workdir=/shared/runs/rme

SIGTERM finishes the current chunk (at most 100 steps), saves a checkpoint,
prints `preempted at step N; checkpoint ...; rerun the same command to resume`
and exits with status 143 (under multi_worker: a SIGTERM to any worker stops
all of them at the same step); a bad input is one `error:` line and status 2.
A second process on the same --workdir is refused at once (a lock released
when the first exits, even by SIGKILL), and so is a config whose estimated
memory exceeds the machine's (README, "Faults and preemption").
"""

from absl import app
from absl import flags

from launch import common

flags.DEFINE_string('workdir', 'runs/train', 'Run directory (created; resumed if it exists).')
common.define_config_flags()
FLAGS = flags.FLAGS
_SELECTED = {'elbo': 'ELBO', 'log_likelihood': 'log p(x)'}


def main(argv):
  del argv
  cfg = common.config_from_flags()
  common.check_data_dir(cfg.data_dir, cfg.dataset)
  common.claim_workdir(FLAGS.workdir, cfg)  # writable, locked, memory bounded; before TF loads
  from rec_vae_tf.training import loop  # pylint: disable=g-import-not-at-top  (TF loads after validation)
  result = loop.train(cfg, FLAGS.workdir, log=common.log)
  best = result.trainer.best_validation.numpy()
  if result.ran_steps == 0:
    common.log(f'{FLAGS.workdir} is already finished ({result.steps} steps); nothing to do')
  common.log(f'done: {result.steps} steps, {result.train_seconds:.0f}s of training, '
             f'best validation {_SELECTED[cfg.selection]} {best:.3f} (model in '
             f'{FLAGS.workdir}/best)')


if __name__ == '__main__':
  app.run(common.run(main), flags_parser=common.parse_flags)
