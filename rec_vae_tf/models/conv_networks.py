"""Convolutional encoders and decoders for images (RME.md, "Data and models").

Same contract as the dense `rec_vae_tf.models.networks`: the encoder returns
`networks.EncoderOutput` for M Gaussian components q_m(z|x) and the mixing
logits, the decoder maps z [..., D] to likelihood parameters and evaluates
log p(x|z) (`rec_vae_tf.models.likelihoods`).

M encoders in one computation. RME gives every component its own encoder
phi_m. Each conv layer of the M encoders is ONE convolution:

  layer 1:   the shared image [B, H, W, C] -> [B, H', W', M * F1], an ordinary
             convolution with M * F1 filters (component m owns filters m*F1..);
  layer l>1: a grouped convolution with M groups (`tf.nn.conv2d` infers
             groups = input channels / kernel input channels): group m reads
             only component m's channels and writes only its own.

So the M encoders have independent weights and share nothing but the input,
exactly as M separate networks (a test slices the weights and runs each
component alone). Grouped convolutions run on TensorFlow's CPU kernels, under
XLA on CPU, and on cuDNN, with gradients. Kernels are stored [M, k, k, in, out]
and biases [M, out] (leading axis M, like `networks.BatchedDense`), so the
trainer's per-component freezing and warm start slice them like the dense
encoders' variables. After the convolutions each component's features are
flattened and `networks.BatchedDense` heads give loc, scale and the eps logit.
No batch normalisation: batch statistics would couple examples and, shared
across components, couple the components' objectives.

Architecture (k = 4, stride 2, 'same' padding, ReLU): L stride-2 conv layers
halve the image while its side is even and above 7 (28 -> 7: L = 2;
32 -> 4: L = 3; 64 -> 4: L = 4), with channels F_i = base * 2^i:
base 32 for `conv_small`, 64 for `conv_large`. The decoder mirrors it
(DCGAN-like): a dense layer to [h0, w0, F_L], L - 1 stride-2 transposed convs
F_{L-1} .. F_1, and a last stride-2 transposed conv to C * n channels, n
likelihood parameters per subpixel.

Parameter counts (D = 50, the Config default; encoder per component with the
amortized eps head; decoder with the given likelihood):

  image      size        channels          encoder / component   decoder
  28x28x1    conv_small  32-64                       350,213     193,249  Bernoulli
  28x28x1    conv_large  64-128                      765,861     452,033  Bernoulli
  32x32x3    conv_small  32-64-128                   372,549     271,462  logistic
  32x32x3    conv_large  64-128-256                1,072,677     870,598  logistic
  64x64x3    conv_small  32-64-128-256             1,103,941     900,326  logistic
  64x64x3    conv_large  64-128-256-512            3,584,037   3,176,902  logistic

Most of a 28x28 encoder is its heads (7 * 7 * F_2 features -> 2 D). RME with
M components has M times the encoder column. A K-mixture of logistics adds
(3K - 2) * C * (16 F_1 + 1) decoder parameters. `tests/test_conv_networks.py`
recomputes the table.

Shapes: B batch, M components, D latent size, P = H * W * C pixels, n
likelihood parameters per pixel, F channels.
"""

import math
from typing import Callable, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from rec_vae_tf.models import likelihoods
from rec_vae_tf.models import networks

CONV_SIZES = ('conv_small', 'conv_large')
_BASE_CHANNELS = {'conv_small': 32, 'conv_large': 64}
KERNEL_SIZE = 4


def num_conv_layers(image_shape: Sequence[int]) -> int:
  """Stride-2 layers: halve while both sides are even and above 7 (28 -> 2, 32 -> 3, 64 -> 4)."""
  height, width = int(image_shape[0]), int(image_shape[1])
  layers = 0
  while height % 2 == 0 and width % 2 == 0 and height > 7 and width > 7:
    height, width, layers = height // 2, width // 2, layers + 1
  if layers == 0:
    raise ValueError(f'image_shape {tuple(image_shape)}: sides must be even and above 7 '
                     'for at least one stride-2 layer')
  return layers


def conv_channels(size: str, image_shape: Sequence[int]) -> Tuple[int, ...]:
  """The encoder's channels per layer for a network size: (base, 2 base, ..., 2^(L-1) base)."""
  if size not in _BASE_CHANNELS:
    raise ValueError(f'size must be one of {CONV_SIZES}, got {size!r}')
  base = _BASE_CHANNELS[size]
  return tuple(base * 2 ** i for i in range(num_conv_layers(image_shape)))


class _ComponentConvGlorot(keras.initializers.Initializer):
  """Glorot-uniform for stacked conv kernels [M, k, k, in, out], fans of one component."""

  def __init__(self, seed=None):
    self.seed = seed

  def __call__(self, shape, dtype=None):
    receptive = shape[1] * shape[2]
    limit = math.sqrt(6.0 / (receptive * shape[3] + receptive * shape[4]))
    return keras.random.uniform(shape, -limit, limit, dtype=dtype, seed=self.seed)

  def get_config(self):
    return {'seed': self.seed}


class GroupedConv2D(keras.layers.Layer):
  """M independent stride-s 2-D convolutions as one (grouped) convolution.

  shared_input=True: input [B, H, W, C], the same for every component;
  False: input [B, H, W, M * C], component-major channels. Output
  [B, H', W', M * F], component-major (component m: channels m*F .. m*F+F-1).
  Variables: kernel [M, k, k, C, F], bias [M, F].
  """

  def __init__(self, num_components: int, filters: int, kernel_size: int = KERNEL_SIZE,
               strides: int = 2, shared_input: bool = False, activation=None, seed=None,
               **kwargs):
    super().__init__(**kwargs)
    self.num_components = num_components
    self.filters = filters
    self.kernel_size = kernel_size
    self.strides = strides
    self.shared_input = shared_input
    self.activation = keras.activations.get(activation)
    self.seed = seed

  def build(self, input_shape):
    channels = int(input_shape[-1])
    if not self.shared_input:
      if channels % self.num_components:
        raise ValueError(f'{channels} input channels are not divisible by M={self.num_components}')
      channels //= self.num_components
    k = self.kernel_size
    self.kernel = self.add_weight(
        name='kernel', shape=(self.num_components, k, k, channels, self.filters),
        initializer=_ComponentConvGlorot(self.seed))
    self.bias = self.add_weight(name='bias', shape=(self.num_components, self.filters),
                                initializer='zeros')

  def call(self, inputs):
    num_components, k, _, channels, filters = self.kernel.shape
    kernel = tf.reshape(tf.transpose(self.kernel, [1, 2, 3, 0, 4]),
                        [k, k, channels, num_components * filters])  # [k, k, C, M * F]
    # Input depth M * C against kernel depth C: a grouped convolution with M groups.
    y = tf.nn.conv2d(inputs, kernel, self.strides, 'SAME')  # [B, H', W', M * F]
    return self.activation(y + tf.reshape(self.bias, [num_components * filters]))


def _initial_eps_logits(num_components: int, eps_mode: str):
  """As `networks.MixtureEncoder`: learned logits start at eps_m = 1/m, fixed ones are 2/(m+1)."""
  def logit(p):
    return math.log(p) - math.log1p(-p)
  if eps_mode == 'fixed':
    return np.array([logit(2.0 / (m + 2)) if m > 0 else 0.0 for m in range(num_components)],
                    np.float32)
  return np.array([logit(1.0 / (m + 1)) if m > 0 else 0.0 for m in range(num_components)],
                  np.float32)


def _seeds(seed, count):
  if seed is None:
    return [None] * count
  return [int(s) for s in np.random.SeedSequence(seed).generate_state(count)]


class ConvMixtureEncoder(networks.ComponentVariableGroups, keras.layers.Layer):
  """M convolutional Gaussian encoders q_m(z|x) and the mixing logits, in one pass.

  Same outputs, properties and eps_mode semantics as `networks.MixtureEncoder`
  (amortized: a sigmoid head per component reading a *stopped* copy of that
  component's features; global: one learned logit per component; fixed:
  2 / (m + 1)).

  Args:
    num_components: M.
    image_shape: (H, W, C); the input is [B, H * W * C], flattened row-major (HWC).
    channels: channels of the stride-2 conv layers (`conv_channels`).
    latent_dim: D.
    eps_mode: 'amortized', 'global' or 'fixed'.
    hidden_units: optional dense layers (per component) between the flattened
      conv features and the heads.
    input_max: the input's largest pixel value (1 for binary or [0, 1] data,
      255 for raw 8-bit values); the network sees 2 x / input_max - 1.
    kernel_size, activation, seed: of the conv and dense layers.
  """

  def __init__(self, num_components: int, image_shape: Sequence[int], channels: Sequence[int],
               latent_dim: int, eps_mode: str = 'amortized', hidden_units: Sequence[int] = (),
               input_max: float = 1.0, kernel_size: int = KERNEL_SIZE, activation: str = 'relu',
               seed=None, **kwargs):
    super().__init__(**kwargs)
    if eps_mode not in ('amortized', 'global', 'fixed'):
      raise ValueError(f'unknown eps_mode {eps_mode!r}')
    self.num_components = num_components
    self.image_shape = tuple(int(s) for s in image_shape)
    self.latent_dim = latent_dim
    self.eps_mode = eps_mode
    self.input_max = float(input_max)
    dtype = kwargs.get('dtype')  # sublayers share the encoder's (mixed) precision policy
    seeds = _seeds(seed, len(channels) + len(hidden_units) + 2)
    self.convs = [GroupedConv2D(num_components, f, kernel_size, 2, shared_input=i == 0,
                                activation=activation, seed=seeds[i], name=f'conv_{i}', dtype=dtype)
                  for i, f in enumerate(channels)]
    networks._track_for_checkpoints(self, 'convs', self.convs)  # pylint: disable=protected-access
    self.dense = [networks.BatchedDense(num_components, h, activation=activation,
                                        seed=seeds[len(channels) + i], name=f'hidden_{i}',
                                        dtype=dtype)
                  for i, h in enumerate(hidden_units)]
    networks._track_for_checkpoints(self, 'dense', self.dense)  # pylint: disable=protected-access
    self.loc_head = networks.BatchedDense(num_components, latent_dim, seed=seeds[-2], name='loc',
                                          dtype=dtype)
    self.scale_head = networks.BatchedDense(num_components, latent_dim, seed=seeds[-1],
                                            name='scale', dtype=dtype)
    initial_logits = _initial_eps_logits(num_components, eps_mode)
    if eps_mode == 'amortized':
      self.eps_head = networks.BatchedDense(
          num_components, 1, kernel_initializer='zeros',
          bias_initializer=keras.initializers.Constant(initial_logits[:, None]), name='eps',
          dtype=dtype)
    elif eps_mode == 'global':
      self.eps_logits = self.add_weight(
          name='eps_logits', shape=(num_components,),
          initializer=keras.initializers.Constant(initial_logits))
    else:
      self._fixed_logits = tf.constant(initial_logits)

  def _feature_shape(self):
    """(h, w, F) of the last conv layer's output per component."""
    height, width, _ = self.image_shape
    for _ in self.convs:
      height, width = -(-height // 2), -(-width // 2)  # 'same' padding, stride 2
    return height, width, self.convs[-1].filters

  def build(self, input_shape):
    del input_shape  # [B, P]; the image shape is fixed at construction
    height, width, channels = self.image_shape
    shape = (None, height, width, channels)
    for conv in self.convs:
      conv.build(shape)
      height, width = -(-height // 2), -(-width // 2)
      shape = (None, height, width, self.num_components * conv.filters)
    shape = (None, self.num_components, int(np.prod(self._feature_shape())))
    for layer in self.dense:
      layer.build(shape)
      shape = (None, self.num_components, layer.units)
    self.loc_head.build(shape)
    self.scale_head.build(shape)
    if self.eps_mode == 'amortized':
      self.eps_head.build(shape)

  def features(self, x):
    """Each component's last hidden features: x [B, P] -> [B, M, H] (compute dtype)."""
    m = self.num_components
    h = tf.reshape(x, (-1,) + self.image_shape)  # [B, H, W, C]
    h = h * (2.0 / self.input_max) - 1.0
    for conv in self.convs:
      h = conv(h)  # [B, h, w, M * F]
    height, width, filters = self._feature_shape()
    h = tf.reshape(h, [-1, height, width, m, filters])
    h = tf.reshape(tf.transpose(h, [0, 3, 1, 2, 4]), [-1, m, height * width * filters])  # [B, M, hwF]
    for layer in self.dense:
      h = layer(h)  # [B, M, H]
    return h

  def call(self, x) -> networks.EncoderOutput:
    h = self.features(x)  # [B, M, H]
    loc = tf.cast(self.loc_head(h), tf.float32)  # [B, M, D]
    scale = tf.nn.softplus(tf.cast(self.scale_head(h), tf.float32)) + networks.MIN_SCALE  # [B, M, D]
    batch = tf.shape(x)[0]
    if self.eps_mode == 'amortized':
      eps_logit = tf.cast(self.eps_head(tf.stop_gradient(h))[..., 0], tf.float32)  # [B, M]
    elif self.eps_mode == 'global':
      eps_logit = tf.broadcast_to(self.eps_logits[None, :], [batch, self.num_components])
    else:
      eps_logit = tf.broadcast_to(self._fixed_logits[None, :], [batch, self.num_components])
    if 'features' in networks.EncoderOutput._fields:  # the flow posteriors' context
      return networks.EncoderOutput(loc, scale, eps_logit, features=tf.cast(h, tf.float32))
    return networks.EncoderOutput(loc, scale, eps_logit)

  def _component_layers(self):
    return self.convs + self.dense + [self.loc_head, self.scale_head]


class ConvDecoder(keras.layers.Layer):
  """p(x|z) from a DCGAN-like transposed-conv stack: z [..., D] -> params [..., P * n].

  Args:
    image_shape: (H, W, C).
    channels: the matching encoder's channels (F_1, ..., F_L); the decoder runs
      F_L (dense, at H / 2^L) -> F_{L-1} -> ... -> F_1 -> C * n.
    likelihood: a `likelihoods` object (n = its params_per_dim).
    kernel_size, activation, seed: of the layers.
  """

  def __init__(self, image_shape: Sequence[int], channels: Sequence[int], likelihood,
               kernel_size: int = KERNEL_SIZE, activation: str = 'relu', seed=None, **kwargs):
    super().__init__(**kwargs)
    self.image_shape = tuple(int(s) for s in image_shape)
    self.likelihood = likelihood
    self.num_pixels = int(np.prod(self.image_shape))
    height, width, colours = self.image_shape
    scale = 2 ** len(channels)
    if height % scale or width % scale:
      raise ValueError(f'image_shape {self.image_shape} is not divisible by 2^{len(channels)}')
    self._base = (height // scale, width // scale, int(channels[-1]))
    dtype = kwargs.get('dtype')
    seeds = _seeds(seed, len(channels) + 1)
    glorot = lambda s: keras.initializers.GlorotUniform(seed=s)
    self.project = keras.layers.Dense(int(np.prod(self._base)), activation=activation,
                                      kernel_initializer=glorot(seeds[0]), name='project',
                                      dtype=dtype)
    self.deconvs = [keras.layers.Conv2DTranspose(
        f, kernel_size, 2, padding='same', activation=activation,
        kernel_initializer=glorot(seeds[1 + i]), name=f'deconv_{i}', dtype=dtype)
                    for i, f in enumerate(reversed(channels[:-1]))]
    networks._track_for_checkpoints(self, 'deconvs', self.deconvs)  # pylint: disable=protected-access
    self.out = keras.layers.Conv2DTranspose(
        colours * likelihood.params_per_dim, kernel_size, 2, padding='same',
        kernel_initializer=glorot(seeds[-1]), name='params', dtype=dtype)

  def build(self, input_shape):
    self.project.build((None, int(input_shape[-1])))
    height, width, filters = self._base
    for layer in self.deconvs + [self.out]:
      layer.build((None, height, width, filters))
      height, width, filters = 2 * height, 2 * width, layer.filters

  def call(self, z):
    batch_shape = tf.shape(z)[:-1]
    h = self.project(tf.reshape(z, [-1, z.shape[-1]]))  # [N, h0 * w0 * F_L]
    h = tf.reshape(h, (-1,) + self._base)  # [N, h0, w0, F_L]
    for layer in self.deconvs:
      h = layer(h)
    h = self.out(h)  # [N, H, W, C * n]
    size = self.num_pixels * self.likelihood.params_per_dim
    params = tf.reshape(h, tf.concat([batch_shape, [size]], 0))  # [..., P * n]
    params.set_shape(z.shape[:-1].concatenate([size]))
    return tf.cast(params, tf.float32)  # float32 whatever the compute dtype

  def log_prob(self, x, z):
    """log p(x|z) summed over pixels. x: [B, P]; z: [..., B, M, D] -> [..., B, M]."""
    params = self(z)  # [..., B, M, P * n]
    return self.log_prob_of_logits(x[:, None, :], params)

  def log_prob_of_logits(self, x, params):
    """log p(x|z) from the network's output: x [..., P] broadcasts against params [..., P * n] -> [...].

    Named like `networks.BernoulliDecoder.log_prob_of_logits` (the evaluator calls it).
    """
    return self.likelihood.log_prob_of_params(x, params)

  log_prob_of_params = log_prob_of_logits

  def mean(self, z):
    """A picture of p(x|z): z [..., D] -> [..., P] in the data's units (`likelihoods` mean)."""
    return self.likelihood.mean(self(z))


def build_conv_networks(num_components: int, size: str, latent_dim: int, eps_mode: str,
                        seed: int, image_shape: Sequence[int], likelihood='bernoulli', *,
                        num_mixtures: int = 5, x_max: float = 255.0,
                        channels: Optional[Sequence[int]] = None,
                        encoder_channels: Optional[Sequence[int]] = None,
                        mixed_precision: bool = False):
  """Builds a (ConvMixtureEncoder, ConvDecoder) pair with all variables created.

  Args:
    num_components: M.
    size: 'conv_small' or 'conv_large' (ignored where `channels` is given).
    latent_dim: D.
    eps_mode: 'amortized', 'global' or 'fixed'.
    seed: initialisation seed (the decoder uses seed + 1000).
    image_shape: (H, W, C); images are fed flattened, [B, H * W * C].
    likelihood: 'bernoulli', 'logistic', 'logistic_mixture' or a
      `likelihoods` object.
    num_mixtures: K for 'logistic_mixture'.
    x_max: the data's value of pixel 255 (logistic likelihoods; the encoder
      input is scaled by it too). Binary data is in {0, 1}.
    channels: overrides the size's channels (tests, custom sizes).
    encoder_channels: the encoders' channels when they differ from the
      decoder's (a capacity-matched VAE); None: `channels`.
    mixed_precision: compute in bfloat16 ('mixed_bfloat16'), float32
      variables and outputs, as `networks.build_networks`.
  Returns:
    (encoder, decoder).
  """
  image_shape = tuple(int(s) for s in image_shape)
  likelihood = likelihoods.get(likelihood, num_mixtures=num_mixtures, x_max=x_max)
  channels = tuple(channels) if channels is not None else conv_channels(size, image_shape)
  dtype = keras.DTypePolicy(networks.MIXED_PRECISION_POLICY) if mixed_precision else None
  encoder = ConvMixtureEncoder(num_components, image_shape, encoder_channels or channels,
                               latent_dim, eps_mode, input_max=likelihood.x_max, seed=seed,
                               name='encoder', dtype=dtype)
  decoder = ConvDecoder(image_shape, channels, likelihood, seed=seed + 1000, name='decoder',
                        dtype=dtype)
  encoder.build((None, int(np.prod(image_shape))))
  decoder.build((None, latent_dim))
  return encoder, decoder


def make_conv_networks(size: str, image_shape: Sequence[int], likelihood='bernoulli',
                       **kwargs) -> Callable:
  """A `make_networks` factory for `trainer.Trainer` that builds conv networks.

  The trainer calls make_networks(num_components, hidden_units, latent_dim,
  eps_mode, seed, num_pixels=P[, mixed_precision=True]); the returned
  function builds `build_conv_networks(num_components, size, latent_dim,
  eps_mode, seed, image_shape, likelihood, **kwargs)`. The dense widths
  `hidden_units` do not apply to conv networks and are ignored.

  Args:
    size, image_shape, likelihood, **kwargs: as `build_conv_networks`.
  Returns:
    make_networks(num_components, hidden_units, latent_dim, eps_mode, seed,
    num_pixels=None, mixed_precision=False, encoder_hidden_units=None)
    -> (encoder, decoder). It raises ValueError when num_pixels is not
    H * W * C, or when encoder_hidden_units asks for encoders that differ
    from the decoder (pass `encoder_channels` here instead).
  """
  image_shape = tuple(int(s) for s in image_shape)

  def make_networks(num_components, hidden_units, latent_dim, eps_mode, seed, num_pixels=None,
                    mixed_precision=False, encoder_hidden_units=None):
    if num_pixels is not None and num_pixels != int(np.prod(image_shape)):
      raise ValueError(f'num_pixels={num_pixels} does not match image_shape {image_shape}')
    if encoder_hidden_units is not None and tuple(encoder_hidden_units) != tuple(hidden_units):
      raise ValueError('encoder_hidden_units (dense widths) does not apply to conv networks; '
                       'give make_conv_networks(..., encoder_channels=...) instead')
    return build_conv_networks(num_components, size, latent_dim, eps_mode, seed, image_shape,
                               likelihood, mixed_precision=mixed_precision, **kwargs)

  return make_networks
