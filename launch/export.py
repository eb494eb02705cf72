r"""Exports a trained run's inference network as a SavedModel.

  python -m launch.export --workdir=runs/default/rme --export_dir=exports/rme

Writes <export_dir>/<next integer version>/ (atomically: built in a temporary
directory, then renamed) with signatures `serving_default`/`encode` (images
[B, 784] in [0, 1] -> log_weights [B, M], loc [B, M, D], scale [B, M, D]) and
`reconstruct` (images -> Bernoulli means). Takes a few seconds.
"""

from absl import app
from absl import flags

from launch import common
from rec_vae_tf import config as config_lib
from rec_vae_tf import errors

flags.DEFINE_string('workdir', None, 'Run directory written by launch/train.py.')
flags.DEFINE_string('export_dir', None, 'Export base directory; versions go in <export_dir>/<N>/.')
flags.DEFINE_string('checkpoint', 'best', "'best' (validation-selected), 'latest', or a checkpoint path.")
flags.DEFINE_integer('export_seed', 0, 'Stateless seed of the sampling signatures.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if not FLAGS.workdir or not FLAGS.export_dir:
    raise errors.UserError('--workdir and --export_dir are required')
  config_lib.Config.load(config_lib.config_path(FLAGS.workdir))  # one-line error if not a run
  from rec_vae_tf import trainer  # pylint: disable=g-import-not-at-top
  from rec_vae_tf import export as export_lib  # pylint: disable=g-import-not-at-top
  cfg, tr, path = trainer.restore_for_evaluation(FLAGS.workdir, which=FLAGS.checkpoint)
  module = export_lib.InferenceModule(tr.encoder, tr.decoder, int(tr.num_active.numpy()),
                                      num_pixels=tr.decoder.num_pixels, seed=FLAGS.export_seed)
  out = export_lib.export_saved_model(module, FLAGS.export_dir)
  common.log(f'exported {path} ({cfg.method}, {int(tr.num_active.numpy())} active components) '
             f'to {out}')


if __name__ == '__main__':
  app.run(common.run(main))
