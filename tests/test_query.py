"""launch/query.py against in-process TF Serving test doubles (gRPC and REST).

No model server can be installed here (ENVIRONMENT.md), so the doubles answer
like one: a `PredictionServiceServicer` on 127.0.0.1 and an http.server
speaking TF Serving's REST predict API, both running requests through the
exported SavedModel loaded with the TF1 session loader (TF Serving's C++
SavedModelBundle path) via `export.SessionModel`, and mapping TF errors to
gRPC status codes / HTTP statuses as TF Serving does. query.py runs as a
subprocess; a tiny untrained model with MNIST-sized images keeps it fast.
"""
from concurrent import futures
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading

import grpc
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from launch import query
from rec_vae_tf.serving import export as export_lib
from rec_vae_tf import methods
from rec_vae_tf.models import networks

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CWD = os.getcwd() if os.path.isfile(os.path.join('launch', 'query.py')) else _ROOT
TIMEOUT = 120

M, D, P = 3, 4, 784  # MNIST-sized images so .png files work
NUM_ACTIVE, K, CHUNK, SEED = 2, 30, 8, 5
MODEL = 'rme'


def _grpc_code(error_code: int) -> grpc.StatusCode:
  """The gRPC status of a TF error code (TF's codes are gRPC's)."""
  return next((c for c in grpc.StatusCode if c.value[0] == error_code), grpc.StatusCode.UNKNOWN)


def _http_status(error_code: int) -> int:
  """TF Serving's HTTP status for a TF error code."""
  return {3: 400, 5: 404, 9: 400, 12: 501}.get(error_code, 500)


class _Servable:
  """The exported model as TF Serving would hold it: session-loaded, one version."""

  def __init__(self, path):
    self.version = int(os.path.basename(path))
    self.model = export_lib.SessionModel(path)
    self.lock = threading.Lock()

  def check_spec(self, name, version):
    if name != MODEL:
      raise tf.errors.NotFoundError(None, None, f'Servable not found for request: Latest({name})')
    if version is not None and version != self.version:
      raise tf.errors.NotFoundError(
          None, None, f'Servable not found for request: Specific({name}, {version})')


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
  """Predict like TF Serving: TF errors become gRPC statuses with TF's message."""

  def __init__(self, servable):
    self.servable = servable

  def Predict(self, request, context):  # pylint: disable=invalid-name
    try:
      spec = request.model_spec
      self.servable.check_spec(spec.name, spec.version.value if spec.HasField('version') else None)
      with self.servable.lock:
        return self.servable.model.predict(request)
    except tf.errors.OpError as e:
      context.abort(_grpc_code(e.error_code), e.message)


def _rest_handler(servable):
  """A BaseHTTPRequestHandler class for POST /v1/models/<name>[/versions/N]:predict."""

  class Handler(http.server.BaseHTTPRequestHandler):

    def log_message(self, *args):  # quiet
      del args

    def _reply(self, status, body):
      data = json.dumps(body).encode()
      self.send_response(status)
      self.send_header('Content-Type', 'application/json')
      self.send_header('Content-Length', str(len(data)))
      self.end_headers()
      self.wfile.write(data)

    def do_POST(self):  # pylint: disable=invalid-name
      match = re.fullmatch(r'/v1/models/([^/:]+)(?:/versions/(\d+))?:predict', self.path)
      if not match:
        return self._reply(404, {'error': f'Malformed request: POST {self.path}'})
      try:
        body = json.loads(self.rfile.read(int(self.headers['Content-Length'])))
        servable.check_spec(match.group(1), int(match.group(2)) if match.group(2) else None)
        signature = body.get('signature_name', 'serving_default')
        dtypes = servable.model.input_dtypes(signature)
        if 'inputs' in body:
          raw = body['inputs'] if isinstance(body['inputs'], dict) else {
              next(iter(dtypes)): body['inputs']}
          columnar = True
        else:
          rows = body['instances']
          raw = ({k: [r[k] for r in rows] for k in rows[0]} if rows and isinstance(rows[0], dict)
                 else {next(iter(dtypes)): rows})
          columnar = False
        try:
          inputs = {k: np.asarray(v, dtypes.get(k, np.float32)) for k, v in raw.items()}
        except (TypeError, ValueError) as e:
          raise tf.errors.InvalidArgumentError(None, None, f'JSON value does not convert: {e}')
        with servable.lock:
          outputs = servable.model.run(signature, inputs)
        lists = {k: v.tolist() for k, v in outputs.items()}
        if columnar:
          return self._reply(200, {'outputs': lists if len(lists) > 1 else
                                   next(iter(lists.values()))})
        if len(lists) == 1:
          return self._reply(200, {'predictions': next(iter(lists.values()))})
        size = len(next(iter(lists.values())))
        return self._reply(200, {'predictions': [{k: v[i] for k, v in lists.items()}
                                                 for i in range(size)]})
      except tf.errors.OpError as e:
        return self._reply(_http_status(e.error_code), {'error': e.message})

  return Handler


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """(eager module, version path) of a tiny untrained model with P = 784."""
  encoder, decoder = networks.build_networks(
      num_components=M, hidden_units=(8,), latent_dim=D, eps_mode='amortized', seed=1,
      num_pixels=P)
  module = export_lib.InferenceModule(methods.for_networks(encoder, decoder), NUM_ACTIVE,
                                      num_pixels=P, seed=SEED,
                                      num_importance_samples=K, chunk=CHUNK)
  base = tmp_path_factory.mktemp('serving')
  return module, export_lib.export_saved_model(module, str(base / MODEL))


@pytest.fixture(scope='module')
def servable(exported):
  servable = _Servable(exported[1])
  yield servable
  servable.model.close()


@pytest.fixture(scope='module')
def grpc_port(servable):
  server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      _PredictionService(servable), server)
  port = server.add_insecure_port('127.0.0.1:0')
  server.start()
  yield port
  server.stop(0)


@pytest.fixture(scope='module')
def rest_port(servable):
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _rest_handler(servable))
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield server.server_address[1]
  server.shutdown()
  server.server_close()


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """Image files: uint8 .npy [3, 784], two 28x28 PNGs, a float .npy of the wrong width."""
  path = tmp_path_factory.mktemp('files')
  rng = np.random.default_rng(0)
  digits = (rng.uniform(size=[3, 28, 28]) > 0.7).astype(np.uint8) * 255
  np.save(path / 'digits.npy', digits.reshape(3, P))
  for i in range(2):
    Image.fromarray(digits[i]).save(path / f'digit{i}.png')
  np.save(path / 'wrong_width.npy', rng.uniform(size=[2, 100]).astype(np.float32))
  np.save(path / 'as_int32.npy', digits.reshape(3, P).astype(np.int32))
  np.save(path / 'too_bright.npy', np.full([1, P], 2.0, np.float32))
  Image.fromarray(np.zeros([20, 20], np.uint8)).save(path / 'small.png')
  return {'dir': path, 'digits': digits.reshape(3, P) / np.float32(255)}


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _query(*flags):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, '-m', 'launch.query', '--host=127.0.0.1', *flags],
                        cwd=CWD, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def _ok(result):
  assert result.returncode == 0, f'stdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}'
  return result.stdout


def _one_line_error(result):
  """Exit status 2, no traceback, exactly one `error:` line and it is the last line."""
  assert result.returncode == 2, (result.returncode, result.stdout, result.stderr[-3000:])
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert lines and lines[-1].startswith('error: '), result.stderr[-3000:]
  assert [l for l in lines if l.startswith('error:')] == [lines[-1]], result.stderr[-3000:]
  return lines[-1]


def _eager(module, signature, **inputs):
  return module.eager_outputs(signature, {k: np.asarray(v) for k, v in inputs.items()})


def _assert_close(actual, expected, atol):
  assert sorted(actual) == sorted(expected)
  for k in expected:
    np.testing.assert_allclose(actual[k], expected[k], atol=atol, rtol=0, err_msg=k)


# ----- gRPC ---------------------------------------------------------------------


def test_grpc_encode_round_trip(exported, grpc_port, files, tmp_path):
  module, _ = exported
  out = tmp_path / 'out.npz'
  stdout = _ok(_query(f'--port={grpc_port}', f'--images={files["dir"] / "digits.npy"}',
                      f'--output={out}'))
  print(stdout)
  lines = [l for l in stdout.splitlines() if 'digits.npy[' in l]
  assert len(lines) == 3 and all('top component' in l and '|mean|' in l for l in lines), stdout
  _assert_close(dict(np.load(out)), _eager(module, 'encode', images=files['digits']), atol=1e-5)
  # Inactive component: weight exactly 0 in every printed line.
  assert all(l.split('weights [')[1].split(']')[0].split()[NUM_ACTIVE:] == ['0.000'] * (M - NUM_ACTIVE)
             for l in lines), stdout


def test_grpc_log_likelihood_from_png(exported, grpc_port, files, tmp_path):
  module, _ = exported
  out = tmp_path / 'out.npz'
  pngs = ','.join(str(files['dir'] / f'digit{i}.png') for i in range(2))
  stdout = _ok(_query(f'--port={grpc_port}', '--signature=log_likelihood', f'--images={pngs}',
                      f'--model_name={MODEL}', '--model_version=1', f'--output={out}'))
  print(stdout)
  expected = _eager(module, 'log_likelihood', images=files['digits'][:2])['log_likelihood']
  served = np.load(out)['log_likelihood']
  np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-3)
  printed = [float(v) for v in re.findall(r'digit\d\.png: log p\(x\) = (\S+) nats', stdout)]
  np.testing.assert_allclose(printed, expected, atol=2e-3)
  assert 'mean log p(x) over 2 image(s)' in stdout


def test_grpc_wrong_image_shape_is_invalid_argument(grpc_port, files):
  message = _one_line_error(_query(f'--port={grpc_port}',
                                   f'--images={files["dir"] / "wrong_width.npy"}'))
  print(message)
  assert 'INVALID_ARGUMENT' in message
  assert 'images must have shape [batch, 784]' in message and '[2 100]' in message


def test_grpc_wrong_dtype_is_invalid_argument(grpc_port, files):
  message = _one_line_error(_query(f'--port={grpc_port}', '--noconvert',
                                   f'--images={files["dir"] / "as_int32.npy"}'))
  print(message)
  assert 'INVALID_ARGUMENT' in message and re.search(r'int32.*float', message), message


def test_grpc_unknown_model_and_unreachable_server(grpc_port, files):
  images = f'--images={files["dir"] / "digits.npy"}'
  message = _one_line_error(_query(f'--port={grpc_port}', '--model_name=nope', images))
  assert 'NOT_FOUND' in message and 'nope' in message, message
  message = _one_line_error(_query(f'--port={_free_port()}', images, '--timeout=10'))
  print(message)
  assert 'cannot reach TF Serving' in message and 'UNAVAILABLE' in message, message


def _stub(port):
  channel = grpc.insecure_channel(f'127.0.0.1:{port}')
  return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


def test_grpc_double_statuses_and_other_signatures(exported, grpc_port, files):
  """Direct stub calls: every signature matches eager; bad requests get INVALID_ARGUMENT."""
  module, _ = exported
  latents = np.random.default_rng(1).standard_normal([3, D]).astype(np.float32)
  good = {'serving_default': {'images': files['digits']},
          'reconstruct': {'images': files['digits']},
          'decode': {'latents': latents},
          'sample': {'count': np.array(3, np.int32)}}
  bad = [('encode', {'images': files['digits'].astype(np.float64)}, r'double.*float'),
         ('encode', {'images': files['digits'][:, :100]}, r'shape \[batch, 784\].*\[3 100\]'),
         ('encode', {'images': files['digits'][0]}, r'shape \[batch, 784\].*\[784\]'),
         ('log_likelihood', {'images': files['digits'] * 3}, r'values in \[0, 1\]'),
         ('encode', {'pixels': files['digits']}, r'expected exactly \[.images.\]'),
         ('decode', {'latents': latents[:, :2]}, rf'shape \[batch, {D}\]'),
         ('sample', {'count': np.array(0, np.int32)}, r'count must be an int32 scalar in \[1, 10000\]'),
         ('sample', {'count': np.array(3, np.int64)}, r'int64.*int32')]
  channel, stub = _stub(grpc_port)
  with channel:
    for signature, inputs in good.items():
      request = export_lib.predict_request(MODEL, signature, inputs)
      response = stub.Predict(request, timeout=30)
      served = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
      _assert_close(served, _eager(module, signature, **inputs), atol=1e-5)
      assert response.model_spec.signature_name == signature
    for signature, inputs, pattern in bad:
      with pytest.raises(grpc.RpcError) as info:
        stub.Predict(export_lib.predict_request(MODEL, signature, inputs), timeout=30)
      assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (signature, inputs.keys())
      assert re.search(pattern, info.value.details()), info.value.details()
    request = export_lib.predict_request(MODEL, 'nope', good['decode'])
    with pytest.raises(grpc.RpcError) as info:
      stub.Predict(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert 'nope' in info.value.details()


# ----- REST ---------------------------------------------------------------------


@pytest.mark.parametrize('fmt', ['inputs', 'instances'])
def test_rest_round_trip(exported, rest_port, files, tmp_path, fmt):
  module, _ = exported
  for signature in ('encode', 'log_likelihood'):
    out = tmp_path / f'{signature}.npz'
    stdout = _ok(_query('--protocol=rest', f'--port={rest_port}', f'--signature={signature}',
                        f'--rest_format={fmt}', f'--images={files["dir"] / "digits.npy"}',
                        f'--output={out}'))
    print(stdout)
    assert f'via rest at 127.0.0.1:{rest_port}' in stdout
    _assert_close(dict(np.load(out)), _eager(module, signature, images=files['digits']),
                  atol=1e-3 if signature == 'log_likelihood' else 1e-5)


def test_rest_sample_and_errors(rest_port, files, tmp_path):
  out = tmp_path / 'sample.npz'
  stdout = _ok(_query('--protocol=rest', f'--port={rest_port}', '--signature=sample', '--count=3',
                      f'--output={out}'))
  assert 'bernoulli_mean: shape [3, 784]' in stdout and 'latents: shape [3, 4]' in stdout, stdout
  message = _one_line_error(_query('--protocol=rest', f'--port={rest_port}',
                                   f'--images={files["dir"] / "wrong_width.npy"}'))
  print(message)
  assert 'HTTP 400' in message and 'images must have shape [batch, 784]' in message, message
  message = _one_line_error(_query('--protocol=rest', f'--port={rest_port}',
                                   '--model_version=7', f'--images={files["dir"] / "digits.npy"}'))
  assert 'HTTP 404' in message and 'Specific(rme, 7)' in message, message
  message = _one_line_error(_query('--protocol=rest', f'--port={_free_port()}',
                                   f'--images={files["dir"] / "digits.npy"}'))
  assert 'cannot reach TF Serving' in message, message


# ----- inputs checked before any request -------------------------------------------


@pytest.mark.parametrize('flags, expected', [
    (['--images=/does/not/exist.npy'], 'no such image file'),
    (['--images={dir}/too_bright.npy'], 'float pixels must be finite and in [0, 1]'),
    (['--images={dir}/small.png'], 'expected a 28x28 grayscale image, got 20x20'),
    (['--images={dir}/digit0.png', '--output=out.txt'], 'must end in .npz'),
    ([], '--signature=encode needs --images'),
    (['--signature=decode'], 'needs --latents'),
    (['--signature=sample', '--count=0'], '--count=0'),
])
def test_bad_inputs_are_one_line_errors(files, flags, expected):
  message = _one_line_error(_query('--port=1', *[f.format(dir=files['dir']) for f in flags]))
  assert expected in message, message


def test_load_images_and_rest_helpers(files):
  images, labels = query.load_images([str(files['dir'] / 'digits.npy'),
                                      str(files['dir'] / 'digit1.png')])
  assert images.dtype == np.float32 and images.shape == (4, P)
  np.testing.assert_array_equal(images[3], files['digits'][1])
  assert labels == ['digits.npy[0]', 'digits.npy[1]', 'digits.npy[2]', 'digit1.png']
  raw, _ = query.load_images([str(files['dir'] / 'as_int32.npy')], convert=False)
  assert raw.dtype == np.int32
  body = query.rest_body('encode', {'images': images[:1]}, 'instances')
  assert body['signature_name'] == 'encode' and np.shape(body['instances']) == (1, P)
  rows = {'predictions': [{'a': [1.0, 2.0]}, {'a': [3.0, 4.0]}]}
  np.testing.assert_array_equal(query.rest_outputs('encode', rows)['a'], [[1, 2], [3, 4]])
  np.testing.assert_array_equal(
      query.rest_outputs('log_likelihood', {'outputs': [-1.5, -2.5]})['log_likelihood'],
      [-1.5, -2.5])
