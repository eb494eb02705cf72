r"""Queries a running TF Serving model exported by launch/export.py (gRPC or REST).

  python -m launch.query --images=digits.npy                      # gRPC, localhost:8500
  python -m launch.query --images=a.png,b.png --signature=log_likelihood
  python -m launch.query --protocol=rest --port=8501 --images=digits.npy

Images come from .npy files ([B, 784] or [B, 28, 28] or one [784] / [28, 28]
image; float in [0, 1] or integers 0..255, scaled by 1/255) or 28x28 grayscale
.png files. Prints, per image, the posterior summary (`encode`, the default:
mixture weights, top component and the norm of its mean) or the
importance-sampled log p(x) (`log_likelihood`); `reconstruct`, `decode`
(--latents=file.npy) and `sample` (--count) print output shapes. --output
saves every output tensor to an .npz file.

Errors (a bad file, an unreachable server, a request the server refuses, e.g.
INVALID_ARGUMENT for a wrong image shape) are one line on stderr, exit status
2. The REST path needs no TensorFlow import (about 0.2 s); the gRPC path
imports it for the TensorProto conversion (a few seconds).
"""

import json
import os
import urllib.error
import urllib.request

from absl import app
from absl import flags
import numpy as np

from launch import common
from rec_vae_tf import errors

SIGNATURES = ('encode', 'serving_default', 'log_likelihood', 'reconstruct', 'decode', 'sample')
# Output alias of single-output signatures (REST returns those without a name).
_SINGLE_OUTPUT = {'log_likelihood': 'log_likelihood', 'reconstruct': 'bernoulli_mean',
                  'decode': 'bernoulli_mean'}

flags.DEFINE_enum('protocol', 'grpc', ['grpc', 'rest'], 'grpc (port 8500) or rest (port 8501).')
flags.DEFINE_string('host', 'localhost', 'TF Serving host.')
flags.DEFINE_integer('port', None, 'TF Serving port; default 8500 for grpc, 8501 for rest.')
flags.DEFINE_string('model_name', 'rme', 'Model name (as in models.config / MODEL_NAME).')
flags.DEFINE_integer('model_version', None, 'Version to query; default: the latest served.')
flags.DEFINE_enum('signature', 'encode', list(SIGNATURES), 'Signature to call.')
flags.DEFINE_list('images', [], 'Comma-separated .npy / .png image files (images signatures).')
flags.DEFINE_string('latents', None, '.npy file of latents [B, D] (decode).')
flags.DEFINE_integer('count', 4, 'Number of images to draw (sample).')
flags.DEFINE_boolean('binarize', False, 'Threshold images at 0.5 before sending (the model was '
                     'trained on binary images; log p(x) of grey pixels is not a probability).')
flags.DEFINE_boolean('convert', True, 'Convert inputs to float32 in [0, 1]; --noconvert sends '
                     '.npy arrays exactly as stored (to see how the server checks its inputs).')
flags.DEFINE_enum('rest_format', 'inputs', ['inputs', 'instances'],
                  'REST request format: columnar "inputs" or row "instances".')
flags.DEFINE_float('timeout', 30.0, 'Request timeout in seconds.')
flags.DEFINE_string('output', None, 'Save all output tensors to this .npz file.')
FLAGS = flags.FLAGS


# ----- inputs -------------------------------------------------------------------


def _load_file(path: str):
  """One file -> (array [B, ...] as stored, one label per image)."""
  if os.path.isdir(path):
    exported = (' (it holds a saved_model.pb: a SavedModel is served by TF Serving, and this '
                'program queries the server; pass image files)'
                if os.path.exists(os.path.join(path, 'saved_model.pb')) else '')
    raise errors.UserError(f'{path} is a directory, not an image file (.npy or .png){exported}')
  if not os.path.isfile(path):
    raise errors.UserError(f'no such image file: {path}')
  ext = os.path.splitext(path)[1].lower()
  if ext == '.npy':
    try:
      array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
      raise errors.UserError(f'{path} is not a readable .npy array: {e}') from e
    if array.ndim == 1 or array.shape == (28, 28):
      array = array[None]  # one image
    if array.ndim == 3:
      array = array.reshape(array.shape[0], -1)
    if array.ndim != 2:
      raise errors.UserError(f'{path}: expected images [B, 784] or [B, 28, 28], got shape '
                             f'{list(array.shape)}')
    return array, [f'{os.path.basename(path)}[{i}]' for i in range(len(array))]
  if ext == '.png':
    from PIL import Image  # pylint: disable=g-import-not-at-top
    try:
      with Image.open(path) as image:
        pixels = np.asarray(image.convert('L'), np.uint8)
    except OSError as e:
      raise errors.UserError(f'{path} is not a readable PNG image: {e}') from e
    if pixels.shape != (28, 28):
      raise errors.UserError(f'{path}: expected a 28x28 grayscale image, got '
                             f'{pixels.shape[1]}x{pixels.shape[0]}')
    return pixels.reshape(1, 784), [os.path.basename(path)]
  raise errors.UserError(f'{path}: unsupported image file type {ext or "(none)"}; use .npy or .png')


def _to_unit_interval(array, path_label: str):
  """Images as float32 in [0, 1]: integers are 0..255 counts, floats must be in [0, 1]."""
  if array.dtype == np.bool_:
    return array.astype(np.float32)
  if np.issubdtype(array.dtype, np.integer):
    if array.size and (array.min() < 0 or array.max() > 255):
      raise errors.UserError(f'{path_label}: integer pixels must be in 0..255, got '
                             f'{array.min()}..{array.max()}')
    return (array / 255.0).astype(np.float32)
  if not np.issubdtype(array.dtype, np.floating):
    raise errors.UserError(f'{path_label}: unsupported pixel dtype {array.dtype}')
  if not np.all(np.isfinite(array)) or (array.size and (array.min() < 0 or array.max() > 1)):
    raise errors.UserError(f'{path_label}: float pixels must be finite and in [0, 1] (got '
                           f'{np.nanmin(array):g}..{np.nanmax(array):g}); save uint8 0..255 '
                           'images as an integer array')
  return array.astype(np.float32)


def load_images(paths, convert: bool = True, binarize: bool = False):
  """Files -> (images [B, F], labels); converted to float32 in [0, 1] unless convert is False."""
  arrays, labels = [], []
  for path in paths:
    array, names = _load_file(path)
    if convert:
      array = _to_unit_interval(array, path)
      if binarize:
        array = (array >= 0.5).astype(np.float32)
    arrays.append(array)
    labels.extend(names)
  widths = {a.shape[1] for a in arrays}
  dtypes = {a.dtype for a in arrays}
  if len(widths) > 1 or len(dtypes) > 1:
    raise errors.UserError(f'image files differ in size or dtype ({sorted(widths)}, '
                           f'{sorted(map(str, dtypes))}); query them separately')
  return np.concatenate(arrays, 0), labels


def _inputs():
  """The request inputs (alias -> array) and one label per row (or None)."""
  sig = FLAGS.signature
  if sig == 'sample':
    if not 1 <= FLAGS.count <= 10000:
      raise errors.UserError(f'--count={FLAGS.count}; allowed: 1 .. 10000')
    return {'count': np.array(FLAGS.count, np.int32)}, None
  if sig == 'decode':
    if not FLAGS.latents:
      raise errors.UserError('--signature=decode needs --latents=file.npy ([B, D] float32)')
    if os.path.isdir(FLAGS.latents):
      raise errors.UserError(f'--latents={FLAGS.latents} is a directory, not a .npy file')
    if not os.path.isfile(FLAGS.latents):
      raise errors.UserError(f'no such latents file: {FLAGS.latents}')
    try:
      latents = np.load(FLAGS.latents, allow_pickle=False)
    except (ValueError, OSError) as e:
      raise errors.UserError(f'{FLAGS.latents} is not a readable .npy array: {e}') from e
    if FLAGS.convert:
      latents = np.atleast_2d(latents).astype(np.float32)
    return {'latents': latents}, [f'latent {i}' for i in range(len(latents))]
  if not FLAGS.images:
    raise errors.UserError(f'--signature={sig} needs --images=FILE[,FILE...] (.npy or .png)')
  images, labels = load_images(FLAGS.images, FLAGS.convert, FLAGS.binarize)
  return {'images': images}, labels


# ----- transports ---------------------------------------------------------------


def _target() -> str:
  port = FLAGS.port or (8500 if FLAGS.protocol == 'grpc' else 8501)
  return f'{FLAGS.host}:{port}'


def _first_line(text: str) -> str:
  return (text or '').strip().splitlines()[0] if (text or '').strip() else '(no details)'


def predict_grpc(target, model_name, signature, inputs, version=None, timeout=30.0):
  """PredictionService.Predict over gRPC -> output alias -> array."""
  import grpc  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=g-import-not-at-top
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature
  if version is not None:
    request.model_spec.version.value = version
  for k, v in inputs.items():
    request.inputs[k].CopyFrom(tf.make_tensor_proto(v))
  with grpc.insecure_channel(target) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
      response = stub.Predict(request, timeout=timeout)
    except grpc.RpcError as e:
      code = e.code()
      if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        raise errors.UserError(f'cannot reach TF Serving at {target} over gRPC ({code.name}: '
                               f'{_first_line(e.details())})') from e
      raise errors.UserError(f'TF Serving refused the request ({code.name}): '
                             f'{_first_line(e.details())}') from e
  return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def rest_body(signature, inputs, fmt='inputs'):
  """The JSON body of a REST predict request ("inputs" columnar or "instances" rows)."""
  if fmt == 'instances' and signature != 'sample':
    [(name, array)] = inputs.items()
    return {'signature_name': signature, 'instances': array.tolist()}
  return {'signature_name': signature, 'inputs': {k: v.tolist() for k, v in inputs.items()}}


def rest_outputs(signature, reply):
  """A REST predict reply -> output alias -> array."""
  if 'outputs' in reply:
    out = reply['outputs']
  elif 'predictions' in reply:
    rows = reply['predictions']
    if rows and isinstance(rows[0], dict):
      out = {k: [row[k] for row in rows] for k in rows[0]}
    else:
      out = rows
  else:
    raise errors.UserError(f'unexpected REST reply (no "outputs" or "predictions"): '
                           f'{json.dumps(reply)[:200]}')
  if not isinstance(out, dict):
    out = {_SINGLE_OUTPUT.get(signature, 'output'): out}
  return {k: np.asarray(v, np.float32) for k, v in out.items()}


def predict_rest(target, model_name, signature, inputs, version=None, timeout=30.0, fmt='inputs'):
  """POST /v1/models/<name>[/versions/N]:predict -> output alias -> array."""
  path = f'/v1/models/{model_name}' + (f'/versions/{version}' if version is not None else '')
  url = f'http://{target}{path}:predict'
  data = json.dumps(rest_body(signature, inputs, fmt)).encode()
  request = urllib.request.Request(url, data=data, headers={'Content-Type': 'application/json'})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as reply:
      return rest_outputs(signature, json.loads(reply.read()))
  except urllib.error.HTTPError as e:
    body = e.read().decode(errors='replace')
    try:
      message = json.loads(body).get('error', body)
    except ValueError:
      message = body
    raise errors.UserError(f'TF Serving refused the request (HTTP {e.code}): '
                           f'{_first_line(message)}') from e
  except (urllib.error.URLError, OSError) as e:
    reason = getattr(e, 'reason', e)
    raise errors.UserError(f'cannot reach TF Serving at {url} ({reason})') from e
  except ValueError as e:
    raise errors.UserError(f'TF Serving at {url} did not answer with JSON: {e}') from e


# ----- printing -----------------------------------------------------------------


def describe(signature, outputs, labels):
  """Readable lines for one reply."""
  lines = []
  if signature in ('encode', 'serving_default'):
    log_w = np.asarray(outputs['log_weights'], np.float64)  # [B, M]
    loc = np.asarray(outputs['loc'], np.float64)  # [B, M, D]
    weights = np.exp(log_w - log_w.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    for i, w in enumerate(weights):
      top = int(np.argmax(w))
      lines.append(f'{labels[i]}: weights [{" ".join(f"{v:.3f}" for v in w)}], top component '
                   f'{top + 1} (weight {w[top]:.3f}), |mean| {np.linalg.norm(loc[i, top]):.3f}')
  elif signature == 'log_likelihood':
    ll = np.asarray(outputs['log_likelihood'], np.float64)  # [B]
    for i, v in enumerate(ll):
      lines.append(f'{labels[i]}: log p(x) = {v:.3f} nats')
    lines.append(f'mean log p(x) over {len(ll)} image(s): {ll.mean():.3f} nats')
  else:
    for k, v in sorted(outputs.items()):
      lines.append(f'{k}: shape {list(np.shape(v))}, range [{np.min(v):.3f}, {np.max(v):.3f}]')
  return lines


def main(argv):
  del argv
  if FLAGS.port is not None and not 0 < FLAGS.port < 65536:
    raise errors.UserError(f'--port={FLAGS.port}; allowed: 1 .. 65535')
  if FLAGS.timeout <= 0:
    raise errors.UserError(f'--timeout={FLAGS.timeout}; allowed: > 0')
  if FLAGS.output and not FLAGS.output.endswith('.npz'):
    raise errors.UserError(f'--output={FLAGS.output}: must end in .npz')
  if FLAGS.output and os.path.isdir(FLAGS.output):  # found before the request, not after
    raise errors.UserError(f'--output={FLAGS.output} is a directory; name an .npz file')
  inputs, labels = _inputs()
  target = _target()
  if FLAGS.protocol == 'grpc':
    outputs = predict_grpc(target, FLAGS.model_name, FLAGS.signature, inputs,
                           FLAGS.model_version, FLAGS.timeout)
  else:
    outputs = predict_rest(target, FLAGS.model_name, FLAGS.signature, inputs,
                           FLAGS.model_version, FLAGS.timeout, FLAGS.rest_format)
  version = '' if FLAGS.model_version is None else f' version {FLAGS.model_version}'
  common.log(f'{FLAGS.model_name}{version} {FLAGS.signature} via {FLAGS.protocol} at {target}:')
  for line in describe(FLAGS.signature, outputs, labels):
    common.log(f'  {line}')
  if FLAGS.output:
    np.savez(FLAGS.output, **outputs)
    common.log(f'saved outputs {sorted(outputs)} to {FLAGS.output}')


if __name__ == '__main__':
  app.run(common.run(main), flags_parser=common.parse_flags)
