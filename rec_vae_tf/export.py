"""SavedModel export of the amortized inference network (RME.md, "Test time").

A dedicated `tf.Module` with explicit input signatures returns dicts of named
tensors:

  serving_default / encode: images [B, P] float32 in [0, 1]
      -> log_weights [B, M], loc [B, M, D], scale [B, M, D]
  reconstruct: images [B, P] -> bernoulli_mean [B, P] (decoder mean at a
      posterior sample, stateless seed: deterministic)

The module keeps the backing `tf.Variable`s of the Keras 3 layers as an
attribute: without them the TF1 session loader (the path of TF Serving's C++
`SavedModelBundle`) fails with "Could not find variable".

Versions are written as `<base>/<integer version>/`, built in a temporary
directory beside it and renamed into place, so a watching server never sees a
half-written version.
"""

import os
import re
import shutil
import tempfile

import tensorflow as tf

from rec_vae_tf import posterior


class InferenceModule(tf.Module):
  """The exported RME posterior (and decoder means) as a servable module."""

  def __init__(self, encoder, decoder, num_active: int, num_pixels: int, seed: int = 0):
    super().__init__(name='rme_inference')
    self._encoder = encoder
    self._decoder = decoder
    self._num_active = tf.constant(int(num_active), tf.int32)
    self._num_pixels = int(num_pixels)
    self._seed = tf.constant([seed, 0], tf.int32)
    self._tf_vars = [v.value for layer in (encoder, decoder) for v in layer.variables]
    spec = tf.TensorSpec([None, num_pixels], tf.float32, name='images')
    self.encode = tf.function(self._encode, input_signature=[spec])
    self.reconstruct = tf.function(self._reconstruct, input_signature=[spec])

  def _check(self, images):
    message = 'images must hold pixel intensities in [0, 1]'
    return [tf.debugging.assert_equal(
                tf.shape(images)[-1], self._num_pixels,
                message=f'images must have shape [batch, {self._num_pixels}] (flattened pixels)'),
            tf.debugging.assert_greater_equal(images, 0.0, message=message),
            tf.debugging.assert_less_equal(images, 1.0, message=message)]

  def _posterior(self, images):
    with tf.control_dependencies(self._check(images)):
      enc = self._encoder(images)
    log_alpha = posterior.recursive_log_weights(enc.eps_logit, self._num_active)  # [B, M]
    return log_alpha, enc.loc, enc.scale

  def _encode(self, images):
    log_alpha, loc, scale = self._posterior(images)
    return {'log_weights': log_alpha, 'loc': loc, 'scale': scale}

  def _reconstruct(self, images):
    log_alpha, loc, scale = self._posterior(images)
    z = posterior.q_z_given_x(log_alpha, loc, scale).sample(seed=self._seed)  # [B, D]
    logits = self._decoder(z)  # [B, P]
    return {'bernoulli_mean': tf.sigmoid(logits)}


def next_version(base: str) -> int:
  """1 + the largest integer version directory under base (1 if none)."""
  if not os.path.isdir(base):
    return 1
  versions = [int(n) for n in os.listdir(base) if re.fullmatch(r'\d+', n)]
  return max(versions, default=0) + 1


def export_saved_model(module: InferenceModule, base: str) -> str:
  """Writes module as `<base>/<next version>/` atomically; returns that path."""
  os.makedirs(base, exist_ok=True)
  version = next_version(base)
  final = os.path.join(base, str(version))
  tmp = tempfile.mkdtemp(prefix=f'.tmp-{version}-', dir=base)
  try:
    signatures = {'serving_default': module.encode, 'encode': module.encode,
                  'reconstruct': module.reconstruct}
    tf.saved_model.save(module, tmp, signatures=signatures)
    os.rename(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return final
