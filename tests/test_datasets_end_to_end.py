"""Issue 5 end to end: one epoch on a fixture of each kind, evaluated and exported.

The three kinds, each through the loader and networks its Config selects
(`rec_vae_tf.models.builders`, which `loop.train` uses when given none):

  binary dense   binarized_mnist (.amat files), network small, binarization fixed
  binary conv    fashion_mnist (gzipped IDX files), network conv_small, dynamic
  colour conv    svhn (tensorflow-datasets, mocked by tfds.testing.mock_data),
                 network conv_small, binarization none (pixel values 0..255)

Each trains one epoch on a handful of images with `loop.train`, is
evaluated with `likelihood.evaluate` (finite nats; bits/dim = -nats / (P ln 2))
and exported with `export.export_saved_model`, whose encode signature is then
run from the loaded SavedModel. Also: invalid dataset / network / binarization
combinations fail validation with one line, config.py's lists agree with
catalog.SPECS, a missing data directory names the files to put there, and the
launchers train (--dataset, --network), evaluate and export a conv model as
subprocesses. Sizes: M = 2, D = 3, batch 4, K = 4 importance samples.
"""
import gzip
import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from launch import common
from rec_vae_tf.models import builders
from rec_vae_tf import config as config_lib
from rec_vae_tf.data import catalog
from rec_vae_tf.data import sources
from rec_vae_tf import errors
from rec_vae_tf.experiments import experiment
from rec_vae_tf.serving import export as export_lib
from rec_vae_tf.evaluation import likelihood
from rec_vae_tf.training import loop as loop_lib

M, D, B, K = 2, 3, 4, 4
SIDE = 28
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CWD = os.getcwd() if os.path.isfile(os.path.join('launch', 'train.py')) else _ROOT
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')


def _write_binarized_mnist(directory, rng, sizes=(8, 4, 4)):
  """Larochelle's format: one image per line, 784 space-separated 0/1."""
  for split, size in zip(('train', 'valid', 'test'), sizes):
    rows = (rng.random([size, SIDE * SIDE]) < 0.3).astype(int)
    with open(directory / f'binarized_mnist_{split}.amat', 'w') as f:
      for row in rows:
        f.write(' '.join(map(str, row)) + '\n')


def _write_fashion_mnist(directory, rng, train=12, test=4):
  """The two gzipped IDX image files (labels are not read)."""
  images = rng.integers(0, 256, [train + test, SIDE, SIDE]).astype(np.uint8)
  for name, part in (('train-images-idx3-ubyte.gz', images[:train]),
                     ('t10k-images-idx3-ubyte.gz', images[train:])):
    with gzip.open(directory / name, 'wb') as f:
      f.write(struct.pack('>IIII', 0x00000803, *part.shape) + part.tobytes())


def _cfg(dataset, network, binarization):
  return config_lib.Config(
      dataset=dataset, network=network, binarization=binarization, method='rme',
      num_components=M, latent_dim=D, epochs=1, epochs_per_component=0.5, batch_size=B,
      eval_batch_size=B, num_importance_samples=K, eval_chunk=K, xla=False).validate()


# kind -> (dataset, network, binarization, fixture writer, validation images carved
# from train: None where the files define the split)
KINDS = {
    'binary_dense': ('binarized_mnist', 'small', 'fixed', _write_binarized_mnist, None),
    'binary_conv': ('fashion_mnist', 'conv_small', 'dynamic', _write_fashion_mnist, 4),
    'colour_conv': ('svhn', 'conv_small', 'none', None, 4),
}


@pytest.mark.parametrize('kind', list(KINDS))
def test_one_epoch_trains_evaluates_and_exports(kind, tmp_path):
  dataset, network, binarization, write, validation = KINDS[kind]
  data_dir = tmp_path / 'data'
  data_dir.mkdir()
  if write is not None:
    write(data_dir, np.random.default_rng(0))
  cfg = _cfg(dataset, network, binarization).replace(data_dir=str(data_dir))
  # The loader builders selects; only the validation size is the fixture's.
  load_data = None if validation is None else builders.load_data_fn(
      cfg, validation_examples=validation)
  lines = []
  if dataset == 'svhn':  # 12 random 32x32x3 images per split, no download
    with tfds.testing.mock_data(num_examples=12):
      result = loop_lib.train(cfg, str(tmp_path / 'run'), load_data=load_data,
                              log=lines.append)
  else:
    result = loop_lib.train(cfg, str(tmp_path / 'run'), load_data=load_data, log=lines.append)
  tr = result.trainer
  spec = catalog.SPECS[dataset]
  num_pixels = spec.num_pixels
  assert result.steps == len(result.splits.train) // B and len(result.history) == 1
  assert np.isfinite(result.history[0]['valid_mixture_elbo'])
  assert int(tr.num_active.numpy()) == M
  assert tr.decoder.num_pixels == num_pixels
  conv = network in config_lib.CONV_NETWORKS
  assert (type(tr.encoder).__name__ == 'ConvMixtureEncoder') == conv

  # The images reach the model as 0/1 (binary) or as pixel values 0..255 (colour).
  test = result.splits.test
  batches = list(experiment.data_lib.make_eval_dataset(
      test, batch_size=B, seed=0, binarization=cfg.binarization))
  x = np.concatenate([b.numpy() for b in batches])
  if dataset == 'svhn':
    np.testing.assert_array_equal(x, test.astype(np.float32))
  else:
    assert set(np.unique(x)) <= {0.0, 1.0}

  ev = likelihood.evaluate(tr.method, batches, tr.num_active.numpy(),
                           num_samples=K, chunk=K, seed=0, xla=False)
  assert ev['num_examples'] == len(test) and ev['num_dims'] == num_pixels
  assert np.isfinite(ev['test_log_likelihood']) and np.isfinite(ev['test_elbo'])
  assert ev['test_log_likelihood'] < 0
  assert ev['test_bits_per_dim'] == pytest.approx(
      -ev['test_log_likelihood'] / (num_pixels * math.log(2)), rel=1e-12)
  if dataset == 'svhn':  # a few bits per subpixel, at most 8 for a flat model
    assert 0 < ev['test_bits_per_dim'] < 16

  module = export_lib.InferenceModule(tr.method, int(tr.num_active.numpy()),
                                      num_pixels=num_pixels, num_importance_samples=K, chunk=K)
  path = export_lib.export_saved_model(module, str(tmp_path / 'export' / 'model'))
  loaded = tf.saved_model.load(path)
  encoded = loaded.signatures['encode'](images=tf.constant(x[:3]))
  assert encoded['loc'].shape == (3, M, D) and encoded['log_weights'].shape == (3, M)
  eager = module.encode(tf.constant(x[:3]))
  np.testing.assert_allclose(encoded['loc'].numpy(), eager['loc'].numpy(), atol=1e-5)
  sampled = loaded.signatures['sample'](count=tf.constant(2))
  mean_name = 'pixel_mean' if dataset == 'svhn' else 'bernoulli_mean'
  picture = sampled[mean_name].numpy()  # the decoder's mean, not sigmoid(params)
  assert picture.shape == (2, num_pixels)
  assert 0 <= picture.min() and picture.max() <= (255 if dataset == 'svhn' else 1)


# ---------------------------------------------------------------- validation


def test_config_lists_agree_with_the_dataset_specs():
  # config's names are the catalog's, and every dataset of the catalog has a loader.
  assert config_lib.DATASETS == tuple(catalog.SPECS) == tuple(sources.LOADERS)
  for name, spec in catalog.SPECS.items():
    assert config_lib.DATASET_BINARIZATIONS[name] == spec.binarizations, name
    assert ('none' in spec.binarizations) == (spec.likelihood != 'bernoulli'), name
    assert (name in config_lib.COLOUR_DATASETS) == (spec.likelihood != 'bernoulli'), name
    # The default binarization of every dataset makes a valid config with a conv network.
    config_lib.Config(dataset=name, network='conv_small',
                      binarization=config_lib.default_binarization(name)).validate()
  assert config_lib.default_binarization('mnist') == config_lib.Config().binarization


@pytest.mark.parametrize('fields, needle', [
    (dict(dataset='cifar10'), "dataset='cifar10'; allowed: one of mnist, binarized_mnist"),
    (dict(network='huge'), "network='huge'; allowed: one of small, large, conv_small, conv_large"),
    (dict(binarization='none'), "binarization='none'; allowed: dynamic or static for dataset=mnist"),
    (dict(dataset='binarized_mnist'), "binarization='dynamic'; allowed: fixed for dataset=binarized"),
    (dict(dataset='caltech101_silhouettes', binarization='static'), 'allowed: fixed for dataset=c'),
    (dict(dataset='svhn', network='conv_small'), "binarization='dynamic'; allowed: none for"),
    (dict(dataset='celeba', binarization='none'), "network='small'; allowed: conv_small or"),
    (dict(dataset='omniglot', binarization='fixed'), 'allowed: dynamic or static for dataset=omni'),
    (dict(network='conv_large', encoder_hidden_units=300), 'encoder_hidden_units=300; allowed: 0'),
])
def test_invalid_dataset_network_binarization_combinations(fields, needle):
  with pytest.raises(errors.ConfigError) as excinfo:
    config_lib.Config(**fields).validate()
  message = str(excinfo.value)
  assert needle in message and '\n' not in message, message


def test_networks_follow_the_config():
  for dataset, network, encoder in (('omniglot', 'large', 'MixtureEncoder'),
                                    ('celeba', 'conv_large', 'ConvMixtureEncoder')):
    cfg = _cfg(dataset, network, config_lib.default_binarization(dataset))
    enc, dec = builders.make_networks_fn(cfg)(M, cfg.hidden_units, D, 'amortized', 0,
                                              num_pixels=builders.num_pixels(cfg))
    assert type(enc).__name__ == encoder
    assert dec.num_pixels == catalog.SPECS[dataset].num_pixels
  assert builders.is_colour(_cfg('celeba', 'conv_small', 'none'))
  assert not builders.is_colour(_cfg('fashion_mnist', 'small', 'static'))


@pytest.mark.parametrize('dataset, needles', [
    ('fashion_mnist', ('train-images-idx3-ubyte.gz', 't10k-images-idx3-ubyte.gz')),
    ('svhn', ('tfds build svhn_cropped:3.1.0',)),
    ('mnist', ('launch.prepare_data',)),
])
def test_a_missing_data_dir_says_which_files_go_where(dataset, needles, tmp_path):
  missing = str(tmp_path / 'nowhere')
  with pytest.raises(errors.DataError) as excinfo:
    common.check_data_dir(missing, dataset)
  message = str(excinfo.value)
  assert '\n' not in message and f'{missing} does not exist' in message, message
  for needle in needles:
    assert needle in message, message


# ---------------------------------------------------------------- launchers


def _launch(launcher, *flags):
  result = subprocess.run([sys.executable, '-m', f'launch.{launcher}', *flags], cwd=CWD, env=ENV,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, f'stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}'
  return result.stdout


def test_launchers_train_evaluate_and_export_a_conv_model_on_another_dataset(tmp_path):
  """--dataset and --network through the real launchers; --binarization defaults to fixed."""
  data_dir, workdir = tmp_path / 'data', str(tmp_path / 'run')
  data_dir.mkdir()
  _write_binarized_mnist(data_dir, np.random.default_rng(1))
  _launch('train', f'--workdir={workdir}', '--dataset=binarized_mnist', '--network=conv_small',
          f'--data_dir={data_dir}', f'--num_components={M}', f'--latent_dim={D}', '--epochs=1',
          '--epochs_per_component=0.5', f'--batch_size={B}', f'--eval_batch_size={B}',
          '--xla=false')
  with open(os.path.join(workdir, 'config.json')) as f:
    saved = json.load(f)
  assert (saved['dataset'], saved['network'], saved['binarization']) == (
      'binarized_mnist', 'conv_small', 'fixed')
  out = _launch('evaluate', f'--workdir={workdir}', f'--num_importance_samples={K}')
  assert 'test log p(x)' in out and 'bits/dim' not in out  # bits/dim: colour data only
  out = _launch('export', f'--workdir={workdir}', f'--export_dir={tmp_path / "exports"}',
                f'--num_importance_samples={K}', f'--importance_chunk={K}')
  assert 'encode: images float32[?, ?] -> loc float32[?, 2, 3]' in out, out
