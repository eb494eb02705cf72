"""SavedModel export of the trained model for TF Serving (RME.md, "Test time").

A dedicated `tf.Module` with explicit input signatures returns dicts of named
tensors (B batch, M components, D latent size, P pixels):

  serving_default / encode: images [B, P] float32 in [0, 1] (binary data; for a
      colour model with a discretized-logistic decoder: pixel values in [0, 255])
      -> log_weights [B, M], loc [B, M, D], scale [B, M, D]
      (the one-pass amortized posterior Q(z|x) = sum_j alpha_j N(loc_j, scale_j^2);
      inactive components carry log weight -1e9). Each method serves its own
      posterior (`Method.encode_outputs`): savae / vae_svi the Gaussian after
      the refinement steps, run in the graph; iaf / hf the base Gaussian plus
      `context` [B, H], the flow's conditioning features
  log_likelihood: images [B, P] -> log_likelihood [B], the importance-sampled
      log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log Q(z_k|x)] - log K,
      z_k ~ Q(.|x) (through the flow for iaf / hf), with K fixed at export time
      (the same chunk function, `likelihood.chunk_logsumexp`, and the same
      per-chunk stateless seeds as `likelihood.Evaluator.log_likelihood`);
      the K samples are drawn `chunk` at a time inside a tf.while_loop that
      keeps a running logsumexp (float64), so memory is O(chunk * B * P)
  reconstruct: images [B, P] -> bernoulli_mean [B, P] (decoder mean at z ~ Q(z|x), the method's posterior)
  decode: latents [B, D] float32 -> bernoulli_mean [B, P]
  sample: count int32 scalar in [1, MAX_COUNT] -> bernoulli_mean [count, P],
      latents [count, D] (z ~ p(z) = N(0, I))
  (a colour model names the decoder's picture `pixel_mean` instead of
  `bernoulli_mean`: `likelihoods.DiscretizedLogistic.mean`, in [0, 255])

Every random draw uses a stateless seed fixed at export time: the same request
gives the same answer. Inputs are checked in the graph (feature size, value
range, count range) and fail with INVALID_ARGUMENT and a message saying what
was expected; a wrong dtype is refused by the signature itself.

The module keeps the backing `tf.Variable`s of the Keras 3 layers as an
attribute: without them the TF1 session loader (the path of TF Serving's C++
`SavedModelBundle`) fails with "Could not find variable".

TF Serving layout, written by `export_saved_model(module, <base>/<model name>)`:

  <base>/models.config                 ModelServerConfig (text), one entry per model
  <base>/<model name>/<version>/       saved_model.pb, variables/, and
      assets.extra/tf_serving_warmup_requests   TFRecord of PredictionLog, one
                                                PredictRequest per signature
      assets.extra/export_summary.json          signatures, K, seed, checkpoint, ...

A version is built in a temporary directory beside the versions (named
`.incomplete-*`, never all digits, so TF Serving ignores it), loaded back
through the session loader, its warmup requests run and compared with the eager
module, and only then renamed to the next integer version: a watching server
never sees half a version, and a crash leaves no version directory behind.
"""

import datetime
import json
import math
import os
import re
import shutil
import tempfile
from typing import Any, Dict, Mapping, Optional

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.util import deprecation
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from rec_vae_tf.evaluation import likelihood

DEFAULT_NUM_IMPORTANCE_SAMPLES = 1000
DEFAULT_CHUNK = 100
MAX_COUNT = 10000  # largest `count` the sample signature accepts
WARMUP_FILE = 'tf_serving_warmup_requests'
SUMMARY_FILE = 'export_summary.json'
MODEL_CONFIG_FILE = 'models.config'
SIGNATURES = ('serving_default', 'encode', 'log_likelihood', 'reconstruct', 'decode', 'sample')
_TEMP_PREFIX = '.incomplete-'
_WARMUP_BATCH = 2


class ExportError(RuntimeError):
  """The written SavedModel did not load or did not reproduce the eager module."""


class InferenceModule(tf.Module):
  """The exported RME posterior, likelihood estimate and decoder as a servable module."""

  def __init__(self, method, num_active: int, num_pixels: int, seed: int = 0,
               num_importance_samples: int = DEFAULT_NUM_IMPORTANCE_SAMPLES,
               chunk: int = DEFAULT_CHUNK):
    """Wraps a trained run's method (its networks and posterior).

    Args:
      method: the run's `methods.base.Method`: its posterior (refined in the
        graph for savae / vae_svi, pushed through the flow for iaf / hf) is
        what encode returns and what log_likelihood and reconstruct sample.
        Its decoder is a `networks.BernoulliDecoder` (latents [..., D] ->
        logits [..., P]) or a `conv_networks.ConvDecoder` (its `.mean(z)` and
        `likelihood.x_max` give the picture and the input range).
      num_active: active mixture components (the rest get weight zero).
      num_pixels: P, the feature size of an image.
      seed: stateless seed of every random draw (a non-negative int32).
      num_importance_samples: K of the log_likelihood signature.
      chunk: importance samples drawn at once inside the graph (bounds memory).
    """
    super().__init__(name='rme_inference')
    if num_importance_samples < 1 or chunk < 1:
      raise ValueError(f'num_importance_samples ({num_importance_samples}) and chunk ({chunk}) '
                       'must be positive')
    if not 0 <= seed < 2**31 - 1:
      raise ValueError(f'seed must be in [0, 2^31 - 1), got {seed}')
    self._method = method
    encoder, decoder = method.encoder, method.decoder
    self._decoder = decoder
    self.method = method.name
    self.served_posterior = method.served_posterior
    self.num_active = int(num_active)
    self.num_components = int(encoder.num_components)
    self.latent_dim = int(encoder.latent_dim)
    self.num_pixels = int(num_pixels)
    self.seed = int(seed)
    self.num_importance_samples = int(num_importance_samples)
    self.chunk = min(int(chunk), self.num_importance_samples)
    self.num_parameters = method.num_parameters()
    # Largest pixel value the model reads: 1 for binary data (and Bernoulli
    # decoders without a likelihood object), 255 for a discretized logistic.
    self.x_max = float(getattr(getattr(decoder, 'likelihood', None), 'x_max', 1.0))
    self.mean_name = 'bernoulli_mean' if self.x_max == 1.0 else 'pixel_mean'
    self._num_active = tf.constant(self.num_active, tf.int32)
    self._tf_vars = [v.value for layer in (encoder, decoder, *method.modules.values())
                     for v in layer.variables]
    images = tf.TensorSpec([None, None], tf.float32, name='images')
    latents = tf.TensorSpec([None, None], tf.float32, name='latents')
    count = tf.TensorSpec([], tf.int32, name='count')
    self.encode = tf.function(self._encode, input_signature=[images])
    self.log_likelihood = tf.function(self._log_likelihood, input_signature=[images])
    self.reconstruct = tf.function(self._reconstruct, input_signature=[images])
    self.decode = tf.function(self._decode, input_signature=[latents])
    self.sample = tf.function(self._sample, input_signature=[count])

  def signatures(self) -> Dict[str, Any]:
    """Signature name -> tf.function, as passed to `tf.saved_model.save`."""
    return {'serving_default': self.encode, 'encode': self.encode,
            'log_likelihood': self.log_likelihood, 'reconstruct': self.reconstruct,
            'decode': self.decode, 'sample': self.sample}

  def _seed(self, stream: int, index=0):
    """Stateless seed [2] int32 for one random stream (index may be a tensor)."""
    return tf.stack([tf.constant(self.seed + stream, tf.int32), tf.cast(index, tf.int32)])

  # ----- input checks: INVALID_ARGUMENT with what was expected ---------------

  def _checked_matrix(self, x, name: str, width: int, what: str, low=None, high=None,
                      range_hint: str = ''):
    """x [B, width] after in-graph checks of its shape and values (INVALID_ARGUMENT)."""
    # A C++ session (TF Serving) does not check a feed against the
    # placeholder's [None, None], so the rank is checked too: with the raw
    # Rank op (tf.rank folds to the placeholder's static rank when traced)
    # and without indexing the shape (unreadable failure on a rank-1 input).
    # The value check runs on a flat view after the shape check has passed.
    shape = tf.shape(x)
    shape_ok = (tf.equal(tf.raw_ops.Rank(input=x), 2)
                & tf.greater(tf.reduce_prod(shape), 0)
                & tf.equal(tf.reduce_prod(shape[1:]), width))
    shape_check = tf.debugging.Assert(
        shape_ok, [f'{name} must have shape [batch, {width}] with batch >= 1 ({what}); '
                   'got shape', shape], summarize=8)
    with tf.control_dependencies([shape_check]):
      flat = tf.reshape(x, [-1])
    if low is not None:
      value_check = tf.debugging.Assert(
          tf.reduce_all((flat >= low) & (flat <= high)),
          [f'{name} must hold values in [{low:g}, {high:g}]{range_hint}; got min', tf.reduce_min(flat),
           'max', tf.reduce_max(flat)])
    else:
      value_check = tf.debugging.Assert(
          tf.reduce_all(tf.math.is_finite(flat)), [f'{name} must be finite'])
    # Functions are optimized for the fed shapes before they run: reshaping
    # gives the layers a static [?, width] input, so a wrong rank reaches the
    # assertions above instead of failing shape inference inside the network.
    with tf.control_dependencies([value_check]):
      return tf.reshape(flat, [-1, width])

  def _checked_images(self, images):
    if self.x_max != 1.0:
      return self._checked_matrix(
          images, 'images', self.num_pixels,
          f'flattened pixel values, float32 in [0, {self.x_max:g}], channels last',
          low=0.0, high=self.x_max, range_hint=' (8-bit pixel values as floats)')
    return self._checked_matrix(
        images, 'images', self.num_pixels,
        'flattened pixel intensities, float32 in [0, 1]: divide uint8 images by 255',
        low=0.0, high=1.0, range_hint=' (pixel intensities: divide 0..255 pixels by 255)')

  def _decoder_mean(self, z):
    """The decoder's picture of p(x|z): [..., D] -> [..., P] (sigmoid of dense Bernoulli logits)."""
    if hasattr(self._decoder, 'mean'):
      return self._decoder.mean(z)
    return tf.sigmoid(self._decoder(z))

  # ----- signatures ----------------------------------------------------------

  def _posterior(self, images):
    x = self._checked_images(images)  # [B, P]
    return x, self._method.posterior(x, self._num_active)

  def _encode(self, images):
    _, post = self._posterior(images)
    return self._method.encode_outputs(post)

  def _log_likelihood(self, images):
    x, post = self._posterior(images)
    num_full, rest = divmod(self.num_importance_samples, self.chunk)

    def chunk_logsumexp(index, size):
      # Chunk `index` uses seed [seed, index], as likelihood.Evaluator does.
      component, eps = likelihood.draw_proposal_noise(
          post.log_alpha, size, self.latent_dim, self._seed(0, index))  # [B, size], [size, B, D]
      return tf.cast(likelihood.chunk_logsumexp(self._method, x, post, component, eps),
                     tf.float64)  # [B]

    def body(index, total):
      both = tf.stack([total, chunk_logsumexp(index, self.chunk)])  # [2, B]
      return index + 1, tf.reduce_logsumexp(both, axis=0)

    start = tf.fill(tf.shape(x)[:1], tf.constant(-np.inf, tf.float64))  # [B]
    _, total = tf.while_loop(lambda index, _: index < num_full, body, (tf.constant(0), start),
                             maximum_iterations=num_full)
    if rest:
      total = tf.reduce_logsumexp(tf.stack([total, chunk_logsumexp(num_full, rest)]), axis=0)
    log_p = total - math.log(self.num_importance_samples)  # [B]
    return {'log_likelihood': tf.cast(log_p, tf.float32)}

  def _reconstruct(self, images):
    _, post = self._posterior(images)
    z = self._method.sample(post, self._seed(0))  # [B, D]
    return {self.mean_name: self._decoder_mean(z)}  # [B, P]

  def _decode(self, latents):
    z = self._checked_matrix(latents, 'latents', self.latent_dim,
                             'float32 points of the latent space')  # [B, D]
    return {self.mean_name: self._decoder_mean(z)}  # [B, P]

  def _sample(self, count):
    message = f'count must be an int32 scalar in [1, {MAX_COUNT}]; got'
    # A C++ session does not check the feed's rank; the raw Size op is not
    # folded to the static shape [] when traced.
    flat = tf.reshape(count, [-1])
    scalar_check = tf.debugging.Assert(
        tf.equal(tf.raw_ops.Size(input=count), 1), [message, flat], summarize=8)
    with tf.control_dependencies([scalar_check]):
      count = tf.reduce_sum(flat)  # the scalar, without a reshape that fails on a wrong size
    range_check = tf.debugging.Assert((count >= 1) & (count <= MAX_COUNT), [message, count])
    with tf.control_dependencies([range_check]):
      shape = tf.stack([tf.identity(count), self.latent_dim])
    z = tf.random.stateless_normal(shape, seed=self._seed(1))  # [count, D]
    return {self.mean_name: self._decoder_mean(z), 'latents': z}

  # ----- warmup --------------------------------------------------------------

  def warmup_inputs(self) -> Dict[str, Dict[str, np.ndarray]]:
    """Small realistic inputs per signature: images are decoder means of prior samples."""
    images = self.sample(tf.constant(_WARMUP_BATCH))[self.mean_name].numpy()  # [2, P]
    latents = np.random.default_rng(self.seed).standard_normal(
        [_WARMUP_BATCH, self.latent_dim]).astype(np.float32)  # [2, D]
    per_input = {'images': {'images': images}, 'latents': {'latents': latents},
                 'count': {'count': np.array(_WARMUP_BATCH, np.int32)}}
    signatures = self.signatures()
    return {name: per_input[_input_name(signatures[name])] for name in SIGNATURES}

  def eager_outputs(self, signature: str, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Runs one signature's function eagerly on numpy inputs."""
    fn = self.signatures()[signature].python_function
    out = fn(**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: np.asarray(v) for k, v in out.items()}


def _input_name(fn) -> str:
  [spec] = fn.input_signature
  return spec.name


# ----- loading like TF Serving --------------------------------------------------


class SessionModel:
  """A SavedModel loaded the way TF Serving loads it, answering PredictRequests.

  Uses the TF1 session loader (the C++ `SavedModelBundle` path of TF Serving
  and `saved_model_cli run`) and C++ callables, which, like TF Serving, pass
  request tensors to the session unconverted: a wrong dtype fails in the
  session with INVALID_ARGUMENT ("Expects arg[0] to be float but int32 is
  provided"). Errors are raised as `tf.errors.OpError`s; their `error_code`
  is the gRPC status code TF Serving would answer with.
  """

  def __init__(self, path: str, tags=('serve',)):
    self.path = path
    self.graph = tf.Graph()
    self.session = tf.compat.v1.Session(graph=self.graph)
    # The TF1 loader is deprecated in Python only; it is TF Serving's path.
    with self.graph.as_default(), deprecation.silence():
      meta_graph = tf.compat.v1.saved_model.loader.load(self.session, list(tags), path)
    self.signature_defs = dict(meta_graph.signature_def)
    self._callables = {}

  def close(self) -> None:
    self.session.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def input_dtypes(self, signature: str) -> Dict[str, np.dtype]:
    """Input alias -> numpy dtype of one signature."""
    sig = self._signature(signature)
    return {k: tf.dtypes.as_dtype(v.dtype).as_numpy_dtype for k, v in sig.inputs.items()}

  def _signature(self, name: str):
    name = name or 'serving_default'
    if name not in self.signature_defs:
      raise tf.errors.FailedPreconditionError(
          None, None, f'Serving signature key "{name}" not found; available: '
          f'{", ".join(sorted(self.signature_defs))}')
    return self.signature_defs[name]

  def run(self, signature: str, inputs: Mapping[str, np.ndarray],
          output_filter=()) -> Dict[str, np.ndarray]:
    """Runs one signature on numpy inputs (passed to the session unconverted).

    Args:
      signature: signature name ('' means serving_default).
      inputs: input alias -> array; must name exactly the signature's inputs.
      output_filter: output aliases to return (all if empty).
    Returns:
      output alias -> array.
    """
    sig = self._signature(signature)
    if set(inputs) != set(sig.inputs):
      raise tf.errors.InvalidArgumentError(
          None, None, f'inputs {sorted(inputs)} do not match signature "{signature}": '
          f'expected exactly {sorted(sig.inputs)}')
    outputs = sorted(output_filter) if output_filter else sorted(sig.outputs)
    unknown = [k for k in outputs if k not in sig.outputs]
    if unknown:
      raise tf.errors.InvalidArgumentError(
          None, None, f'output tensor alias(es) {unknown} not in signature "{signature}": '
          f'available {sorted(sig.outputs)}')
    names = sorted(inputs)
    key = (signature, tuple(outputs))
    if key not in self._callables:
      options = config_pb2.CallableOptions()
      options.feed.extend(sig.inputs[k].name for k in names)
      options.fetch.extend(sig.outputs[k].name for k in outputs)
      self._callables[key] = self.session._make_callable_from_options(options)  # pylint: disable=protected-access
    values = self._callables[key](*[np.asarray(inputs[k]) for k in names])
    return dict(zip(outputs, values))

  def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    """Answers a PredictRequest like TF Serving's Predict (errors: tf.errors.OpError)."""
    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    outputs = self.run(request.model_spec.signature_name, inputs, request.output_filter)
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    response.model_spec.signature_name = request.model_spec.signature_name or 'serving_default'
    for k, v in outputs.items():
      response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
    return response


# ----- warmup, summary, model config ---------------------------------------------


def predict_request(model_name: str, signature: str,
                    inputs: Mapping[str, np.ndarray]) -> predict_pb2.PredictRequest:
  """A PredictRequest for one signature (arrays keep their dtype)."""
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature
  for k, v in inputs.items():
    request.inputs[k].CopyFrom(tf.make_tensor_proto(np.asarray(v)))
  return request


def write_warmup(path: str, requests) -> None:
  """Writes PredictRequests as a TFRecord of PredictionLog (TF Serving's warmup format)."""
  with tf.io.TFRecordWriter(path) as writer:
    for request in requests:
      log = prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request))
      writer.write(log.SerializeToString())


def _tensor_info(info) -> Dict[str, Any]:
  shape = None if info.tensor_shape.unknown_rank else [
      None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim]
  return {'dtype': tf.dtypes.as_dtype(info.dtype).name, 'shape': shape, 'tensor': info.name}


def signature_summary(signature_defs) -> Dict[str, Any]:
  """Signature name -> {method, inputs, outputs: alias -> dtype, shape, tensor}."""
  return {name: {'method': sig.method_name,
                 'inputs': {k: _tensor_info(v) for k, v in sorted(sig.inputs.items())},
                 'outputs': {k: _tensor_info(v) for k, v in sorted(sig.outputs.items())}}
          for name, sig in sorted(signature_defs.items()) if name in SIGNATURES}


def update_model_config(path: str, model_name: str, base_path: str) -> None:
  """Adds or updates one model in a text-format ModelServerConfig file (atomically)."""
  config = model_server_config_pb2.ModelServerConfig()
  if os.path.exists(path):
    with open(path) as f:
      text_format.Parse(f.read(), config)
  models = config.model_config_list.config
  entry = next((c for c in models if c.name == model_name), None)
  if entry is None:
    entry = models.add()
  entry.name = model_name
  entry.base_path = os.path.abspath(base_path)
  entry.model_platform = 'tensorflow'
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w') as f:
    f.write(text_format.MessageToString(config))
  os.replace(tmp, path)


# ----- versions --------------------------------------------------------------------


def versions(model_dir: str):
  """Sorted integer versions under model_dir (directories named by digits only)."""
  if not os.path.isdir(model_dir):
    return []
  return sorted(int(n) for n in os.listdir(model_dir)
                if re.fullmatch(r'\d+', n) and os.path.isdir(os.path.join(model_dir, n)))


def next_version(model_dir: str) -> int:
  """1 + the largest integer version directory under model_dir (1 if none)."""
  return max(versions(model_dir), default=0) + 1


def _verify(module: InferenceModule, path: str, warmup, atol: float = 1e-3,
            rtol: float = 1e-4) -> Dict[str, Any]:
  """Loads path through the session loader and runs the warmup requests.

  Returns the signature summary and the largest deviation from the eager
  module; raises ExportError if a request fails or deviates beyond atol + rtol|x|.
  """
  worst = 0.0
  try:
    with SessionModel(path) as model:
      for request, (signature, inputs) in warmup:
        response = model.predict(request)
        served = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
        eager = module.eager_outputs(signature, inputs)
        if sorted(served) != sorted(eager):
          raise ExportError(f'{signature}: outputs {sorted(served)} != eager {sorted(eager)}')
        for k in eager:
          diff = np.abs(served[k].astype(np.float64) - eager[k])
          if not np.all(diff <= atol + rtol * np.abs(eager[k])):
            raise ExportError(f'{signature}/{k}: the session-loaded export deviates from the '
                              f'eager module by {diff.max():g}')
          worst = max(worst, float(diff.max()))
      summary = signature_summary(model.signature_defs)
  except tf.errors.OpError as e:
    raise ExportError(f'the export does not run through the session loader: {e.message}') from e
  return {'signatures': summary, 'max_abs_deviation_from_eager': worst}


def export_saved_model(module: InferenceModule, model_dir: str, *,
                       extra_summary: Optional[Mapping[str, Any]] = None,
                       write_model_config: bool = True) -> str:
  """Writes module as `<model_dir>/<next version>/` atomically; returns that path.

  model_dir is `<base>/<model name>`: TF Serving's base_path of the model. The
  version gets a warmup file and an export summary in assets.extra/, is
  verified through the session loader before it is renamed into place, and
  (with write_model_config) `<base>/models.config` gains or updates the entry
  for `<model name>`.

  Args:
    module: the InferenceModule to export.
    model_dir: `<base>/<model name>`.
    extra_summary: more fields for export_summary.json (e.g. the source checkpoint).
    write_model_config: also write/update `<base>/models.config`.
  Returns:
    the path of the new version directory.
  """
  model_dir = os.path.abspath(model_dir)
  model_name = os.path.basename(model_dir)
  os.makedirs(model_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=model_dir)
  try:
    tf.saved_model.save(module, tmp, signatures=module.signatures())
    extra_dir = os.path.join(tmp, 'assets.extra')
    os.makedirs(extra_dir, exist_ok=True)
    warmup = [(predict_request(model_name, name, inputs), (name, inputs))
              for name, inputs in module.warmup_inputs().items()]
    write_warmup(os.path.join(extra_dir, WARMUP_FILE), [r for r, _ in warmup])
    verified = _verify(module, tmp, warmup)
    summary = {
        'model_name': model_name,
        'base_path': model_dir,
        'signatures': verified['signatures'],
        'num_importance_samples': module.num_importance_samples,
        'importance_chunk': module.chunk,
        'seed': module.seed,
        'num_active': module.num_active,
        'num_components': module.num_components,
        'latent_dim': module.latent_dim,
        'num_pixels': module.num_pixels,
        'input_max': module.x_max,
        'num_parameters': module.num_parameters,
        'method': module.method,
        'served_posterior': module.served_posterior,
        'max_count': MAX_COUNT,
        'warmup_requests': [name for _, (name, _) in warmup],
        'max_abs_deviation_from_eager': verified['max_abs_deviation_from_eager'],
        'tensorflow_version': tf.__version__,
        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        **dict(extra_summary or {}),
    }
    # Another exporter may take a version between choosing and renaming: retry.
    for _ in range(100):
      version = next_version(model_dir)
      summary['version'] = version
      with open(os.path.join(extra_dir, SUMMARY_FILE), 'w') as f:
        json.dump(summary, f, indent=2)
      final = os.path.join(model_dir, str(version))
      try:
        os.rename(tmp, final)
        break
      except OSError:
        if not os.path.exists(final):
          raise
    else:
      raise ExportError(f'could not claim a version directory in {model_dir}')
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if write_model_config:
    update_model_config(os.path.join(os.path.dirname(model_dir), MODEL_CONFIG_FILE),
                        model_name, model_dir)
  return final


def read_summary(version_dir: str) -> Dict[str, Any]:
  """The export_summary.json of a version directory."""
  with open(os.path.join(version_dir, 'assets.extra', SUMMARY_FILE)) as f:
    return json.load(f)
