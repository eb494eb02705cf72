"""TF Serving export: a trained tiny model through every loader TF Serving-like tools use.

A tiny run is trained and exported with the real launchers (subprocesses);
the exported signatures are compared with the eager model restored from the
same checkpoint, through the TF1 session loader (`loader.load`, the path of
TF Serving's C++ SavedModelBundle, fetched by the signature's tensor names),
`saved_model_cli run`, and TF2's `tf.saved_model.load`. Also: the warmup
file, the export summary and models.config, versions and crashes, and bad
inputs (INVALID_ARGUMENT with a readable message). Tolerances: 1e-5 absolute
for the posterior and Bernoulli means, 1e-5 relative (+1e-3 absolute, values
are ~ -500 nats in float32) for log p(x).
"""
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from rec_vae_tf.serving import export as export_lib
from rec_vae_tf.evaluation import likelihood
from rec_vae_tf import methods
from rec_vae_tf.models import networks
from rec_vae_tf.training import trainer as trainer_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CWD = os.getcwd() if os.path.isfile(os.path.join('launch', 'export.py')) else _ROOT
TIMEOUT = 180
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')

P, B = 784, 3
K, CHUNK, SEED = 50, 16, 3  # 50 = 3 full chunks + a remainder of 2
TRAIN = ['--method=rme', '--num_components=2', '--epochs=2', '--epochs_per_component=1',
         '--batch_size=16', '--latent_dim=3', '--num_importance_samples=5', '--xla=false']
LOG_P_TOL = dict(rtol=1e-5, atol=1e-3)


def _bars(count, rng):
  """[count, 784] uint8 images of one horizontal or vertical bar (as in test_launchers)."""
  images = np.zeros([count, 28, 28], np.uint8)
  for image in images:
    start, width = rng.integers(2, 23), rng.integers(2, 5)
    bar = (slice(start, start + width), slice(3, 25))
    image[bar if rng.integers(0, 2) else bar[::-1]] = rng.integers(160, 256)
  return images.reshape(count, P)


def _launch(launcher, *flags):
  return subprocess.run([sys.executable, '-m', f'launch.{launcher}', *flags], cwd=CWD, env=ENV,
                        capture_output=True, text=True, timeout=TIMEOUT)


def _ok(result):
  assert result.returncode == 0, f'stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}'
  return result.stdout


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A trained tiny workdir exported once with launch/export.py.

  Returns a dict: workdir, base, path (version 1), stdout, module (the eager
  InferenceModule from the same checkpoint), images [B, P] binary test images.
  """
  root = tmp_path_factory.mktemp('run')
  rng = np.random.default_rng(0)
  arrays = {}
  for split, count in (('train', 64), ('valid', 20), ('test', 20)):
    arrays[f'x_{split}'] = _bars(count, rng)
    arrays[f'y_{split}'] = np.zeros(count, np.int64)
  np.savez(root / 'mnist.npz', **arrays)
  workdir, base = str(root / 'rme'), str(root / 'exports')
  _ok(_launch('train', f'--workdir={workdir}', f'--data_dir={root}', *TRAIN))
  stdout = _ok(_launch('export', f'--workdir={workdir}', f'--export_dir={base}',
                       f'--num_importance_samples={K}', f'--importance_chunk={CHUNK}',
                       f'--export_seed={SEED}'))
  _, tr, _ = trainer_lib.restore_for_evaluation(workdir)
  module = export_lib.InferenceModule(tr.method, int(tr.num_active.numpy()),
                                      num_pixels=P, seed=SEED, num_importance_samples=K,
                                      chunk=CHUNK)
  images = (arrays['x_test'][:B] > 127).astype(np.float32)
  return {'workdir': workdir, 'base': base, 'path': os.path.join(base, 'rme', '1'),
          'stdout': stdout, 'module': module, 'images': images}


def _inputs(run):
  """Signature -> inputs: binary test images, latents [B, D], a count."""
  latents = np.random.default_rng(1).standard_normal([B, 3]).astype(np.float32)
  images = {'images': run['images']}
  return {'serving_default': images, 'encode': images, 'log_likelihood': images,
          'reconstruct': images, 'decode': {'latents': latents},
          'sample': {'count': np.array(B, np.int32)}}


def _assert_matches_eager(signature, actual, expected):
  assert sorted(actual) == sorted(expected), signature
  for k in expected:
    tol = LOG_P_TOL if signature == 'log_likelihood' else dict(rtol=0, atol=1e-5)
    np.testing.assert_allclose(actual[k], expected[k], err_msg=f'{signature}/{k}', **tol)


def _eager_all(run):
  return {s: run['module'].eager_outputs(s, x) for s, x in _inputs(run).items()}


def test_launcher_layout_summary_and_model_config(run):
  base, path, stdout = run['base'], run['path'], run['stdout']
  print(stdout)
  assert f"exported version 1 of model 'rme' to {path}" in stdout
  assert sorted(os.listdir(base)) == ['models.config', 'rme']
  # The versions and the export lock (a dot file: TF Serving reads only numeric names).
  assert sorted(os.listdir(os.path.join(base, 'rme'))) == ['.lock', '1']
  assert os.path.getsize(os.path.join(base, 'rme', '.lock')) == 0  # released: no holder
  assert sorted(os.listdir(os.path.join(path, 'assets.extra'))) == [
      'export_summary.json', 'tf_serving_warmup_requests']

  config = model_server_config_pb2.ModelServerConfig()
  with open(os.path.join(base, 'models.config')) as f:
    text_format.Parse(f.read(), config)
  [entry] = config.model_config_list.config
  assert (entry.name, entry.base_path, entry.model_platform) == (
      'rme', os.path.join(base, 'rme'), 'tensorflow')
  assert os.path.isabs(entry.base_path)

  summary = export_lib.read_summary(path)
  _, tr, checkpoint = trainer_lib.restore_for_evaluation(run['workdir'])
  assert summary['version'] == 1 and summary['model_name'] == 'rme'
  assert (summary['num_importance_samples'], summary['importance_chunk'], summary['seed']) == (
      K, CHUNK, SEED)
  assert summary['checkpoint'] == os.path.abspath(checkpoint)
  assert summary['num_active'] == int(tr.num_active.numpy()) == 2
  assert summary['num_parameters'] == networks.count_parameters(tr.encoder, tr.decoder)
  assert sorted(summary['signatures']) == sorted(export_lib.SIGNATURES)
  encode = summary['signatures']['encode']
  assert encode['inputs'] == {'images': {'dtype': 'float32', 'shape': [None, None],
                                         'tensor': encode['inputs']['images']['tensor']}}
  assert encode['outputs']['loc']['shape'] == [None, 2, 3]
  assert summary['signatures']['sample']['inputs']['count']['dtype'] == 'int32'
  assert summary['signatures']['sample']['inputs']['count']['shape'] == []
  assert summary['max_abs_deviation_from_eager'] < 1e-3
  assert json.dumps(summary)  # plain JSON


def test_session_loader_matches_eager_for_every_signature(run):
  """tf.compat.v1 loader.load + sess.run on the signature's tensor names."""
  eager = _eager_all(run)
  with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as sess:
    meta_graph = tf.compat.v1.saved_model.loader.load(sess, ['serve'], run['path'])
    assert sorted(meta_graph.signature_def) == sorted(
        export_lib.SIGNATURES + ('__saved_model_init_op',))
    for signature, inputs in _inputs(run).items():
      sig = meta_graph.signature_def[signature]
      assert sig.method_name == 'tensorflow/serving/predict'
      assert sorted(sig.inputs) == sorted(inputs)
      fetches = {k: v.name for k, v in sig.outputs.items()}
      feed = {sig.inputs[k].name: v for k, v in inputs.items()}
      first = sess.run(fetches, feed)
      _assert_matches_eager(signature, first, eager[signature])
      for k, v in sess.run(fetches, feed).items():  # stateless seeds: deterministic
        np.testing.assert_array_equal(v, first[k], err_msg=f'{signature}/{k}')


def test_log_likelihood_is_the_evaluator_estimate(run):
  """Same math and per-chunk seeds as likelihood.Evaluator (K = 3 chunks + a remainder)."""
  module = run['module']
  evaluator = likelihood.Evaluator(module._method, xla=False)  # pylint: disable=protected-access
  expected = evaluator.log_likelihood(tf.constant(run['images']), tf.constant(2), K, CHUNK, SEED)
  with export_lib.SessionModel(run['path']) as model:
    served = model.run('log_likelihood', {'images': run['images']})['log_likelihood']
  print(f'served log p(x) {served}, evaluator {expected}')
  np.testing.assert_allclose(served, expected, **LOG_P_TOL)
  assert served.shape == (B,) and np.all(np.isfinite(served))


@pytest.mark.parametrize('signature', ['serving_default', 'log_likelihood', 'decode', 'sample'])
def test_saved_model_cli_run(run, signature, tmp_path):
  inputs = _inputs(run)[signature]
  args = []
  for k, v in inputs.items():
    np.save(tmp_path / f'{k}.npy', v)
    args.append(f'{k}={tmp_path / f"{k}.npy"}')
  outdir = tmp_path / 'out'
  result = subprocess.run(
      [sys.executable, '-m', 'tensorflow.python.tools.saved_model_cli', 'run', '--dir',
       run['path'], '--tag_set', 'serve', '--signature_def', signature,
       '--inputs', ';'.join(args), '--outdir', str(outdir)],
      capture_output=True, text=True, timeout=TIMEOUT, env=ENV)
  assert result.returncode == 0, result.stderr[-3000:]
  expected = run['module'].eager_outputs(signature, inputs)
  cli = {k: np.load(outdir / f'{k}.npy') for k in expected}
  _assert_matches_eager(signature, cli, expected)


def test_tf2_load_matches_eager(run):
  loaded = tf.saved_model.load(run['path'])
  eager = _eager_all(run)
  for signature, inputs in _inputs(run).items():
    out = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    _assert_matches_eager(signature, {k: v.numpy() for k, v in out.items()}, eager[signature])
  encode = eager['encode']
  np.testing.assert_allclose(np.exp(encode['log_weights']).sum(-1), 1.0, atol=1e-5)
  assert np.all(encode['scale'] > 0)
  means = eager['sample']['bernoulli_mean']
  assert means.shape == (B, P) and np.all((means >= 0) & (means <= 1))


def _read_warmup(path):
  """The PredictionLog records of a warmup file."""
  logs = []
  for record in tf.data.TFRecordDataset(path):
    log = prediction_log_pb2.PredictionLog()
    log.ParseFromString(record.numpy())
    logs.append(log)
  return logs


def test_warmup_requests_parse_match_signatures_and_run(run):
  logs = _read_warmup(os.path.join(run['path'], 'assets.extra', export_lib.WARMUP_FILE))
  assert all(log.WhichOneof('log_type') == 'predict_log' for log in logs)
  requests = [log.predict_log.request for log in logs]
  assert sorted(r.model_spec.signature_name for r in requests) == sorted(export_lib.SIGNATURES)
  with export_lib.SessionModel(run['path']) as model:
    for request in requests:
      name = request.model_spec.signature_name
      assert request.model_spec.name == 'rme'
      sig = model.signature_defs[name]
      assert sorted(request.inputs) == sorted(sig.inputs), name
      for k, tensor in request.inputs.items():
        assert tensor.dtype == sig.inputs[k].dtype, (name, k)
      images = [tf.make_ndarray(t) for k, t in request.inputs.items() if k == 'images']
      for x in images:  # realistic: decoder means of prior samples, a small batch
        assert x.shape == (2, P) and x.min() >= 0 and x.max() <= 1
      response = model.predict(request)
      assert sorted(response.outputs) == sorted(sig.outputs), name
      for k, v in response.outputs.items():
        assert np.all(np.isfinite(tf.make_ndarray(v))), (name, k)


BAD = [
    ('encode', {'images': np.zeros([2, P + 1], np.float32)}, r'images must have shape \[batch, 784\].*\[2 785\]'),
    ('encode', {'images': np.zeros([P], np.float32)}, r'images must have shape \[batch, 784\].*\[784\]'),
    ('encode', {'images': np.zeros([2, 28, 28], np.float32)}, r'images must have shape \[batch, 784\].*\[2 28 28\]'),
    ('log_likelihood', {'images': np.zeros([0, P], np.float32)}, r'batch >= 1.*\[0 784\]'),
    ('reconstruct', {'images': np.full([2, P], 255.0, np.float32)}, r'images must hold values in \[0, 1\].*255'),
    ('encode', {'images': np.full([1, P], np.nan, np.float32)}, r'images must hold values in \[0, 1\]'),
    ('encode', {'images': np.zeros([2, P], np.int32)}, r'int32 vs\. expect float'),
    ('log_likelihood', {'images': np.zeros([2, P], np.uint8)}, r'uint8 vs\. expect float'),
    ('decode', {'latents': np.zeros([2, 4], np.float32)}, r'latents must have shape \[batch, 3\].*\[2 4\]'),
    ('decode', {'latents': np.full([2, 3], np.inf, np.float32)}, r'latents must be finite'),
    ('sample', {'count': np.array(0, np.int32)}, r'count must be an int32 scalar in \[1, 10000\]; got\] \[0\]'),
    ('sample', {'count': np.array(10001, np.int32)}, r'in \[1, 10000\]; got\] \[10001\]'),
    ('sample', {'count': np.array([2, 3], np.int32)}, r'count must be an int32 scalar.*\[2 3\]'),
    ('sample', {'count': np.array(2.0, np.float32)}, r'float vs\. expect int32'),
]


def test_bad_inputs_are_invalid_argument_through_the_session_loader(run):
  """Fed unconverted, like TF Serving: each fails with INVALID_ARGUMENT and says what was expected."""
  with export_lib.SessionModel(run['path']) as model:
    for signature, inputs, pattern in BAD:
      with pytest.raises(tf.errors.InvalidArgumentError, match=pattern) as info:
        model.run(signature, inputs)
      first_line = info.value.message.splitlines()[0]
      print(f'{signature} {[(k, v.dtype.name, v.shape) for k, v in inputs.items()]}: {first_line}')
      assert len(first_line) < 300
    assert model.run('encode', {'images': run['images']})['loc'].shape == (B, 2, 3)  # still serves


def test_bad_inputs_through_tf2_signatures(run):
  encode = tf.saved_model.load(run['path']).signatures['encode']
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'shape \[batch, 784\]'):
    encode(images=tf.zeros([2, P + 1]))
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'values in \[0, 1\]'):
    encode(images=tf.fill([2, P], 2.0))


# ----- versions, crashes, model config (tiny untrained networks: fast) ------------


def _tiny_module(seed=0):
  encoder, decoder = networks.build_networks(
      num_components=3, hidden_units=(8,), latent_dim=4, eps_mode='amortized', seed=seed,
      num_pixels=12)
  return export_lib.InferenceModule(methods.for_networks(encoder, decoder), num_active=2,
                                    num_pixels=12,
                                    num_importance_samples=10, chunk=4)


def test_versions_model_config_and_failed_export(tmp_path, monkeypatch):
  base = tmp_path / 'base'
  module = _tiny_module()
  assert export_lib.export_saved_model(module, str(base / 'rme')) == str(base / 'rme' / '1')
  assert export_lib.export_saved_model(module, str(base / 'rme')) == str(base / 'rme' / '2')
  assert export_lib.export_saved_model(module, str(base / 'other')) == str(base / 'other' / '1')
  assert export_lib.read_summary(str(base / 'rme' / '2'))['version'] == 2
  config = model_server_config_pb2.ModelServerConfig()
  text_format.Parse((base / 'models.config').read_text(), config)
  assert [(c.name, c.base_path) for c in config.model_config_list.config] == [
      ('rme', str(base / 'rme')), ('other', str(base / 'other'))]

  def failing_warmup(path, requests):
    del requests
    with open(path, 'wb') as f:
      f.write(b'half written')
    raise OSError('disk full')

  with monkeypatch.context() as patch:
    patch.setattr(export_lib, 'write_warmup', failing_warmup)
    with pytest.raises(OSError, match='disk full'):
      export_lib.export_saved_model(module, str(base / 'rme'))
  assert sorted(os.listdir(base / 'rme')) == ['1', '2']  # no version, no temporary left
  assert export_lib.export_saved_model(module, str(base / 'rme')) == str(base / 'rme' / '3')


def test_export_killed_midway_leaves_no_version(tmp_path):
  """SIGKILL after the SavedModel is written: only a non-numeric temp dir remains."""
  model_dir = tmp_path / 'rme'
  script = f"""
import os, signal
from rec_vae_tf import methods
from rec_vae_tf.models import networks
from rec_vae_tf.serving import export as export_lib
def killed(path, requests):
  open(path, 'wb').write(b'half')
  os.kill(os.getpid(), signal.SIGKILL)
export_lib.write_warmup = killed
encoder, decoder = networks.build_networks(3, (8,), 4, 'amortized', seed=0, num_pixels=12)
module = export_lib.InferenceModule(methods.for_networks(encoder, decoder), 2, num_pixels=12,
                                    num_importance_samples=10)
export_lib.export_saved_model(module, {str(model_dir)!r})
"""
  result = subprocess.run([sys.executable, '-c', script], cwd=CWD, env=ENV, capture_output=True,
                          text=True, timeout=TIMEOUT)
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
  left = os.listdir(model_dir)
  assert len(left) == 1 and left[0].startswith('.incomplete-') and not left[0].isdigit(), left
  assert export_lib.versions(str(model_dir)) == []
  assert os.path.isfile(model_dir / left[0] / 'saved_model.pb')  # it really was mid-export
  assert export_lib.export_saved_model(_tiny_module(), str(model_dir)) == str(model_dir / '1')
  assert export_lib.versions(str(model_dir)) == [1]


@pytest.mark.parametrize('flag, expected', [
    ('--model_name=123', 'model_name'),
    ('--num_importance_samples=0', 'num_importance_samples'),
    ('--export_seed=-1', 'export_seed'),
])
def test_export_launcher_bad_flags_are_one_line_errors(run, flag, expected, tmp_path):
  result = _launch('export', f'--workdir={run["workdir"]}', f'--export_dir={tmp_path}', flag)
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and expected in last, last
  assert os.listdir(tmp_path) == []
