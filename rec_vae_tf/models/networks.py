"""Encoder and decoder networks (Keras 3 layers).

RME (RME.md) gives every mixture component its own encoder phi_m. Running M
small MLPs in a Python loop would cost M kernel launches per layer, so the M
encoders are stored as stacked weights `[M, in, out]` and evaluated together
with one batched matmul (einsum) per layer: the same math as M separate
networks, each with its own independently initialised parameters.

Networks return tensors; `rec_vae_tf.models.posterior` turns them into distributions.

Shapes: B batch, M components, D latent size, H hidden units, P pixels.
"""

import math
from typing import NamedTuple, Sequence

import keras
import numpy as np
import tensorflow as tf

# Smallest posterior scale; keeps log q finite when a head saturates.
MIN_SCALE = 1e-4


def _logit(p: float) -> float:
  return math.log(p) - math.log1p(-p)


class _ComponentGlorot(keras.initializers.Initializer):
  """Glorot-uniform for stacked kernels [M, in, out], with fans of one component.

  Keras' own initializers treat leading dimensions as a receptive field and
  would shrink the range by M.
  """

  def __init__(self, seed=None):
    self.seed = seed

  def __call__(self, shape, dtype=None):
    fan_in, fan_out = shape[-2], shape[-1]
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return keras.random.uniform(shape, -limit, limit, dtype=dtype, seed=self.seed)

  def get_config(self):
    return {'seed': self.seed}


class BatchedDense(keras.layers.Layer):
  """M independent dense layers applied in one matmul (shared input) or einsum.

  Input `[B, in]` (the same input for every component) or `[B, M, in]`;
  output `[B, M, out]`.
  """

  def __init__(self, num_components: int, units: int, activation=None,
               kernel_initializer=None, bias_initializer='zeros', seed=None, **kwargs):
    super().__init__(**kwargs)
    self.num_components = num_components
    self.units = units
    self.activation = keras.activations.get(activation)
    self.kernel_initializer = kernel_initializer or _ComponentGlorot(seed)
    self.bias_initializer = bias_initializer

  def build(self, input_shape):
    in_dim = int(input_shape[-1])
    self.kernel = self.add_weight(
        name='kernel', shape=(self.num_components, in_dim, self.units),
        initializer=self.kernel_initializer)
    self.bias = self.add_weight(
        name='bias', shape=(self.num_components, self.units), initializer=self.bias_initializer)

  def call(self, inputs):
    num_components, in_dim, units = self.kernel.shape
    if len(inputs.shape) == 2:
      # A shared input: one [B, in] @ [in, M * out] matmul. Measured (README,
      # "Performance") as fast as the einsum 'bi,mio->bmo' with XLA and 20%
      # faster without; the variable keeps its [M, in, out] checkpoint shape.
      kernel = tf.reshape(tf.transpose(self.kernel, [1, 0, 2]),
                          [in_dim, num_components * units])  # [in, M * out]
      y = tf.reshape(tf.matmul(inputs, kernel), [-1, num_components, units])  # [B, M, out]
    else:
      y = tf.einsum('bmi,mio->bmo', inputs, self.kernel)  # [B, M, out]
    return self.activation(y + self.bias)


class EncoderOutput(NamedTuple):
  loc: tf.Tensor        # [B, M, D]
  scale: tf.Tensor      # [B, M, D]
  eps_logit: tf.Tensor  # [B, M]; eps_m = sigmoid(eps_logit[:, m]); column 0 unused (eps_1 = 1)
  # [B, M, H] float32: each component's last hidden layer (the context of the
  # flow posteriors, rec_vae_tf.models.flows); None for encoders without one.
  features: tf.Tensor = None


class ComponentVariableGroups:
  """The two variable groups of an M-encoder layer (dense or conv), for the trainer.

  Subclasses give `_component_layers()` (every layer of phi_1..phi_M) and have
  `eps_mode` with `eps_head` (amortized) or `eps_logits` (global).
  """

  @property
  def component_variables(self):
    """Variables of phi_1..phi_M (leading axis M): trained by the component objectives only."""
    out = []
    for layer in self._component_layers():
      out.extend(layer.trainable_variables)
    return out

  @property
  def weight_variables(self):
    """Variables of the mixing weights (leading axis M): trained by the mixture bound only."""
    if self.eps_mode == 'amortized':
      return list(self.eps_head.trainable_variables)
    if self.eps_mode == 'global':
      return [self.eps_logits]
    return []


class MixtureEncoder(ComponentVariableGroups, keras.layers.Layer):
  """M Gaussian encoders q_m(z|x) = N(loc_m(x), diag(scale_m(x)^2)) and the mixing logits.

  eps_mode:
    amortized: eps_m(x) = sigmoid(head_m(h_m(x))). The head reads a stopped copy
      of the trunk features, so the mixture bound trains the head and never the
      component's trunk (RME.md update 3 is w.r.t. the weights only).
    global: one learned logit per component.
    fixed: eps_m = 2 / (m + 1) (1-based m), the classical Frank-Wolfe step.
  Learned logits start at eps_m = 1/m, which makes the initial weights uniform.
  """

  def __init__(self, num_components: int, hidden_units: Sequence[int], latent_dim: int,
               eps_mode: str = 'amortized', activation: str = 'relu', seed=None, **kwargs):
    super().__init__(**kwargs)
    self.num_components = num_components
    self.latent_dim = latent_dim
    self.eps_mode = eps_mode
    seeds = np.random.SeedSequence(seed).generate_state(len(hidden_units) + 3) if seed is not None else [None] * (len(hidden_units) + 3)
    dtype = kwargs.get('dtype')  # sublayers share the encoder's (mixed) precision policy
    self.trunk = [BatchedDense(num_components, h, activation=activation, seed=int(s) if s is not None else None,
                               name=f'hidden_{i}', dtype=dtype)
                  for i, (h, s) in enumerate(zip(hidden_units, seeds))]
    _track_for_checkpoints(self, 'trunk', self.trunk)
    self.loc_head = BatchedDense(num_components, latent_dim, seed=_int(seeds[-3]), name='loc', dtype=dtype)
    self.scale_head = BatchedDense(num_components, latent_dim, seed=_int(seeds[-2]), name='scale',
                                   dtype=dtype)
    initial_logits = np.array([_logit(1.0 / (m + 1)) if m > 0 else 0.0
                               for m in range(num_components)], np.float32)
    if eps_mode == 'amortized':
      self.eps_head = BatchedDense(
          num_components, 1, kernel_initializer='zeros',
          bias_initializer=keras.initializers.Constant(initial_logits[:, None]), name='eps',
          dtype=dtype)
    elif eps_mode == 'global':
      self.eps_logits = self.add_weight(
          name='eps_logits', shape=(num_components,),
          initializer=keras.initializers.Constant(initial_logits))
    elif eps_mode == 'fixed':
      self._fixed_logits = tf.constant(
          [_logit(2.0 / (m + 2)) if m > 0 else 0.0 for m in range(num_components)], tf.float32)
    else:
      raise ValueError(f'unknown eps_mode {eps_mode!r}')

  def build(self, input_shape):
    shape = tuple(input_shape)
    for layer in self.trunk:
      layer.build(shape)
      shape = (shape[0], self.num_components, layer.units)
    self.loc_head.build(shape)
    self.scale_head.build(shape)
    if self.eps_mode == 'amortized':
      self.eps_head.build(shape)

  def call(self, x) -> EncoderOutput:
    h = x  # [B, P]
    for layer in self.trunk:
      h = layer(h)  # [B, M, H]
    # Outputs in float32 whatever the compute dtype: the density math stays float32.
    loc = tf.cast(self.loc_head(h), tf.float32)  # [B, M, D]
    scale = tf.nn.softplus(tf.cast(self.scale_head(h), tf.float32)) + MIN_SCALE  # [B, M, D]
    batch = tf.shape(x)[0]
    if self.eps_mode == 'amortized':
      eps_logit = tf.cast(self.eps_head(tf.stop_gradient(h))[..., 0], tf.float32)  # [B, M]
    elif self.eps_mode == 'global':
      eps_logit = tf.broadcast_to(self.eps_logits[None, :], [batch, self.num_components])
    else:
      eps_logit = tf.broadcast_to(self._fixed_logits[None, :], [batch, self.num_components])
    return EncoderOutput(loc, scale, eps_logit, tf.cast(h, tf.float32))

  def _component_layers(self):
    return self.trunk + [self.loc_head, self.scale_head]


def _track_for_checkpoints(owner, name, layers):
  """Makes each layer of a list a named dependency of `owner`.

  Keras 3 tracks list attributes for its own `variables`, but
  `tf.train.Checkpoint` does not see into them: without this, checkpoints
  silently miss every layer held in a list.
  """
  for i, layer in enumerate(layers):
    setattr(owner, f'{name}_{i}', layer)


def _int(seed):
  return int(seed) if seed is not None else None


class BernoulliDecoder(keras.layers.Layer):
  """p(x|z) = Bernoulli(logits=dec(z)): an MLP from [..., D] to [..., P] logits."""

  def __init__(self, hidden_units: Sequence[int], num_pixels: int = 784,
               activation: str = 'relu', seed=None, **kwargs):
    super().__init__(**kwargs)
    self.num_pixels = num_pixels
    dtype = kwargs.get('dtype')
    self.hidden = [keras.layers.Dense(h, activation=activation, name=f'hidden_{i}', dtype=dtype,
                                      kernel_initializer=keras.initializers.GlorotUniform(
                                          seed=None if seed is None else seed + i))
                   for i, h in enumerate(hidden_units)]
    _track_for_checkpoints(self, 'hidden', self.hidden)
    self.out = keras.layers.Dense(num_pixels, name='logits', dtype=dtype,
                                  kernel_initializer=keras.initializers.GlorotUniform(
                                      seed=None if seed is None else seed + 100))

  def build(self, input_shape):
    shape = tuple(input_shape)
    for layer in self.hidden:
      layer.build(shape)
      shape = shape[:-1] + (layer.units,)
    self.out.build(shape)

  def call(self, z):
    h = z
    for layer in self.hidden:
      h = layer(h)
    return tf.cast(self.out(h), tf.float32)  # [..., P] float32 logits whatever the compute dtype

  def log_prob(self, x, z):
    """log p(x|z) summed over pixels. x: [B, P]; z: [..., B, M, D] -> [..., B, M]."""
    logits = self(z)  # [..., B, M, P]
    return self.log_prob_of_logits(x[:, None, :], logits)

  @staticmethod
  def log_prob_of_logits(x, logits):
    """log p(x|z) from the network's output: x broadcasts against logits [..., P] -> [...]."""
    return bernoulli_log_prob(x, logits)


def bernoulli_log_prob(x, logits):
  """sum_p x log sigmoid(l) + (1 - x) log sigmoid(-l) = sum_p (x l - softplus(l)).

  Written for speed, measured with XLA on CPU (README, "Performance"):
  softplus(l) = max(l, 0) + log(1 + exp(-|l|)) vectorizes much better than
  `tf.nn.softplus` (whose log1p is the slow part; log(1 + u) with u <= 1 loses
  at most 6e-8 absolute per pixel), and the sum over pixels is a matrix-vector
  product, so the elementwise part is not fused into a slow row reduction.
  The result is computed in float32 whatever the logits' dtype.
  """
  logits = tf.cast(logits, tf.float32)
  per_pixel = (x * logits - tf.maximum(logits, 0.0)
               - tf.math.log(1.0 + tf.exp(-tf.abs(logits))))  # [..., P]
  ones = tf.ones([per_pixel.shape[-1], 1], per_pixel.dtype)
  return tf.squeeze(tf.linalg.matmul(per_pixel, ones), -1)  # [...]


def count_parameters(*layers) -> int:
  return int(sum(np.prod(v.shape) for layer in layers for v in layer.trainable_variables))


MIXED_PRECISION_POLICY = 'mixed_bfloat16'


def build_networks(num_components: int, hidden_units: Sequence[int], latent_dim: int,
                   eps_mode: str, seed: int, num_pixels: int = 784,
                   mixed_precision: bool = False, encoder_hidden_units: Sequence[int] = None):
  """Builds (encoder, decoder) with all variables created.

  Args:
    num_components, hidden_units, latent_dim, eps_mode, seed, num_pixels: as
      `MixtureEncoder` and `BernoulliDecoder`.
    mixed_precision: compute the layers in bfloat16 (Keras policy
      'mixed_bfloat16'); variables stay float32 (same checkpoints) and both
      networks still return float32, so every log density is float32. Meant
      for GPUs; bfloat16 needs no loss scaling.
    encoder_hidden_units: the encoders' hidden layers when they differ from
      the decoder's (the capacity-matched VAE); None: `hidden_units`.
  Returns:
    (encoder, decoder).
  """
  dtype = keras.DTypePolicy(MIXED_PRECISION_POLICY) if mixed_precision else None
  encoder = MixtureEncoder(num_components, encoder_hidden_units or hidden_units, latent_dim,
                           eps_mode, seed=seed,
                           name='encoder', dtype=dtype)
  decoder = BernoulliDecoder(tuple(reversed(hidden_units)), num_pixels, seed=seed + 1000,
                             name='decoder', dtype=dtype)
  encoder.build((None, num_pixels))
  decoder.build((None, latent_dim))
  return encoder, decoder
