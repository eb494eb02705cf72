"""SavedModel export: round trips through TF2, the TF1 session loader and saved_model_cli.

The TF1 session loader and `saved_model_cli run` use the C++ SavedModelBundle
path of TF Serving, which fails on Keras 3 variables unless the module tracks
their backing `tf.Variable`s (ENVIRONMENT.md, "SavedModel and TF Serving").
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from rec_vae_tf import export as export_lib
from rec_vae_tf import networks

M, D, P = 3, 4, 12  # components, latent dims, pixels: pairwise distinct
NUM_ACTIVE = 2
B = 5
OUTPUTS = ('log_weights', 'loc', 'scale')


def _module():
  encoder, decoder = networks.build_networks(
      num_components=M, hidden_units=(8,), latent_dim=D, eps_mode='amortized', seed=0,
      num_pixels=P)
  return export_lib.InferenceModule(encoder, decoder, num_active=NUM_ACTIVE, num_pixels=P)


def _images(batch=B, seed=0):
  """Pixel intensities in [0, 1], endpoints included: [batch, P]."""
  x = np.random.default_rng(seed).uniform(size=[batch, P]).astype(np.float32)
  x[0, :2] = [0.0, 1.0]
  return x


def _numpy(outputs):
  return {k: np.asarray(v) for k, v in outputs.items()}


def _assert_outputs_close(actual, expected, atol=1e-5):
  assert sorted(actual) == sorted(expected)
  for key in expected:
    np.testing.assert_allclose(actual[key], expected[key], atol=atol, rtol=0, err_msg=key)


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """(module, path of version 1, eager encode and reconstruct outputs on _images())."""
  module = _module()
  path = export_lib.export_saved_model(module, str(tmp_path_factory.mktemp('export')))
  x = tf.constant(_images())
  eager_encode = _numpy(module._encode(x))  # pylint: disable=protected-access
  eager_recon = _numpy(module._reconstruct(x))  # pylint: disable=protected-access
  return module, path, eager_encode, eager_recon


def test_tf2_round_trip_matches_eager(exported):
  _, path, eager_encode, eager_recon = exported
  assert os.path.basename(path) == '1'
  loaded = tf.saved_model.load(path)
  x = tf.constant(_images())
  encode = _numpy(loaded.signatures['encode'](images=x))
  _assert_outputs_close(encode, eager_encode)
  _assert_outputs_close(_numpy(loaded.signatures['serving_default'](images=x)), eager_encode)
  assert encode['log_weights'].shape == (B, M)
  assert encode['loc'].shape == encode['scale'].shape == (B, M, D)
  np.testing.assert_allclose(np.exp(encode['log_weights']).sum(-1), 1.0, atol=1e-5)
  assert np.all(np.exp(encode['log_weights'][:, NUM_ACTIVE:]) == 0)  # inactive component
  assert np.all(encode['scale'] > 0)

  first = _numpy(loaded.signatures['reconstruct'](images=x))
  second = _numpy(loaded.reconstruct(x))
  np.testing.assert_array_equal(first['bernoulli_mean'], second['bernoulli_mean'])
  _assert_outputs_close(first, eager_recon)
  assert first['bernoulli_mean'].shape == (B, P)


def test_tf1_session_loader_serving_default(exported):
  """The loader path of TF Serving's SavedModelBundle, signature looked up by name."""
  _, path, eager_encode, _ = exported
  with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as sess:
    meta_graph = tf.compat.v1.saved_model.loader.load(sess, ['serve'], path)
    signature = meta_graph.signature_def['serving_default']
    assert list(signature.inputs) == ['images']
    assert sorted(signature.outputs) == sorted(OUTPUTS)
    fetches = {k: signature.outputs[k].name for k in OUTPUTS}
    feed = {signature.inputs['images'].name: _images()}
    _assert_outputs_close(sess.run(fetches, feed), eager_encode)

    # A wrong feature size is refused by the placeholder's static shape.
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
      sess.run(fetches, {signature.inputs['images'].name: np.zeros([2, P + 1], np.float32)})
    with pytest.raises(tf.errors.InvalidArgumentError, match=r'\[0, 1\]'):
      sess.run(fetches, {signature.inputs['images'].name: _images() * 2})


def test_saved_model_cli_run(exported, tmp_path):
  _, path, eager_encode, _ = exported
  np.save(tmp_path / 'batch.npy', _images())
  outdir = tmp_path / 'out'
  result = subprocess.run(
      [sys.executable, '-m', 'tensorflow.python.tools.saved_model_cli', 'run', '--dir', path,
       '--tag_set', 'serve', '--signature_def', 'serving_default',
       '--inputs', f'images={tmp_path / "batch.npy"}', '--outdir', str(outdir)],
      capture_output=True, text=True, timeout=120,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-3000:]
  cli = {k: np.load(outdir / f'{k}.npy') for k in OUTPUTS}
  _assert_outputs_close(cli, eager_encode)


def test_versions_and_failed_export_leave_nothing_behind(tmp_path, monkeypatch):
  base = str(tmp_path / 'model')
  module = _module()
  assert export_lib.export_saved_model(module, base) == os.path.join(base, '1')
  assert export_lib.export_saved_model(module, base) == os.path.join(base, '2')

  def failing_save(obj, export_dir, signatures=None, options=None):
    del obj, signatures, options
    with open(os.path.join(export_dir, 'saved_model.pb'), 'wb') as f:
      f.write(b'half written')
    raise RuntimeError('disk full')

  with monkeypatch.context() as patch:
    patch.setattr(tf.saved_model, 'save', failing_save)
    with pytest.raises(RuntimeError, match='disk full'):
      export_lib.export_saved_model(module, base)
  assert sorted(os.listdir(base)) == ['1', '2']

  assert export_lib.export_saved_model(module, base) == os.path.join(base, '3')
  assert sorted(os.listdir(base)) == ['1', '2', '3']
  assert os.path.isfile(os.path.join(base, '3', 'saved_model.pb'))


def test_bad_inputs_are_rejected(exported):
  _, path, _, _ = exported
  loaded = tf.saved_model.load(path)
  encode = loaded.signatures['serving_default']
  for bad in (_images() * 2, _images() - 1):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r'\[0, 1\]'):
      encode(images=tf.constant(bad))
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'\[0, 1\]'):
    loaded.reconstruct(tf.constant(_images() + 0.5))
  wrong_size = tf.zeros([2, P + 1])
  # The restored tf.function checks its input_signature; the signature wrapper
  # does not, and the graph fails at the first matmul instead.
  with pytest.raises((ValueError, TypeError)):
    loaded.encode(wrong_size)
  with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
    encode(images=wrong_size)
