"""Normalizing-flow posteriors: the `iaf` and `hf` baselines (RME.md, "Baselines").

A flow posterior starts from the encoder's Gaussian q_0(z_0|x) = N(loc, diag scale^2)
and pushes the sample through T invertible maps conditioned on the encoder's
last hidden features h(x):

  z_T = f_T(... f_1(z_0; h) ...; h),
  log q_T(z_T|x) = log q_0(z_0|x) - sum_t log |det d f_t / d z_{t-1}|.

Every density this library needs is at a sample it drew itself, so only the
forward direction is ever computed (one pass per step, XLA-friendly).

  iaf  inverse autoregressive flow (Kingma et al. 2016), built from TFP
       bijectors: each step is `tfb.Invert(tfb.MaskedAutoregressiveFlow(fn))`,
       whose forward map z' = (z - shift(z; h)) * exp(-log_scale(z; h)) is one
       pass of a MADE network `fn` (masked dense layers, the context h added to
       the first hidden layer). The variable order is reversed between steps.
       The output layer starts at zero, so an untrained flow is the identity.
  hf   Householder flow (Tomczak & Welling 2016): z' = (I - 2 v v^T / |v|^2) z
       with v_1 = W_1 h + b_1 and v_t = W_t v_{t-1} + b_t, each step a
       `tfb.ScaleMatvecLinearOperator(tf.linalg.LinearOperatorHouseholder(v))`.
       Reflections are volume preserving: log |det| = 0, so log q_T(z_T) =
       log q_0(z_0), and the flow adds full-covariance structure.

Shapes: N any leading sample/batch axes, B batch, D latent size, H features.
"""

import functools
from typing import Tuple

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from rec_vae_tf.models import networks

tfb = tfp.bijectors

FLOW_METHODS = ('iaf', 'hf')
# Soft bound on IAF's log-scale: 3 * tanh(s / 3) keeps exp(-log_scale) in
# [0.05, 20], so a bad step cannot blow a sample up (smooth, unlike a clip).
LOG_SCALE_BOUND = 3.0


def _made_degrees(latent_dim: int, hidden_units: int, reverse: bool):
  """MADE degrees: inputs 1..D (reversed if asked), hidden units cycle over 1..D-1."""
  inputs = np.arange(1, latent_dim + 1)
  if reverse:
    inputs = inputs[::-1]
  hidden = (np.arange(hidden_units) % max(latent_dim - 1, 1)) + 1
  return inputs, hidden


class MADE(keras.layers.Layer):
  """shift, log_scale = MADE(z; h): output d depends only on z's earlier variables.

  Earlier = lower degree; with `reverse` the order of the variables is reversed.
  z: [..., D]; context h: [..., H] broadcasting against z's leading axes.
  """

  def __init__(self, latent_dim: int, hidden_units: int, context_dim: int,
               reverse: bool = False, seed=None, **kwargs):
    super().__init__(**kwargs)
    self.latent_dim = latent_dim
    in_deg, hid_deg = _made_degrees(latent_dim, hidden_units, reverse)
    # mask[i, k] = 1 where unit k may see input i.
    self._in_mask = tf.constant((hid_deg[None, :] >= in_deg[:, None]).astype(np.float32))  # [D, Hm]
    out_mask = (in_deg[None, :] > hid_deg[:, None]).astype(np.float32)  # [Hm, D]
    self._out_mask = tf.constant(np.concatenate([out_mask, out_mask], axis=1))  # [Hm, 2D]
    init = keras.initializers.GlorotUniform(seed=seed)
    self.in_kernel = self.add_weight(name='in_kernel', shape=(latent_dim, hidden_units),
                                     initializer=init)
    self.context_kernel = self.add_weight(
        name='context_kernel', shape=(context_dim, hidden_units),
        initializer=keras.initializers.GlorotUniform(seed=None if seed is None else seed + 1))
    self.hidden_bias = self.add_weight(name='hidden_bias', shape=(hidden_units,),
                                       initializer='zeros')
    # Zero output layer: shift = 0, log_scale = 0, the identity map.
    self.out_kernel = self.add_weight(name='out_kernel', shape=(hidden_units, 2 * latent_dim),
                                      initializer='zeros')
    self.out_bias = self.add_weight(name='out_bias', shape=(2 * latent_dim,),
                                    initializer='zeros')

  def call(self, z, context):
    hidden = tf.nn.relu(
        tf.linalg.matmul(z, self.in_kernel * self._in_mask)
        + tf.linalg.matmul(context, self.context_kernel) + self.hidden_bias)  # [..., Hm]
    out = tf.linalg.matmul(hidden, self.out_kernel * self._out_mask) + self.out_bias  # [..., 2D]
    shift, raw_log_scale = tf.split(out, 2, axis=-1)  # [..., D] each
    return shift, LOG_SCALE_BOUND * tf.tanh(raw_log_scale / LOG_SCALE_BOUND)


def _made_params(made, context, y, **unused_condition_kwargs):
  return made(y, context)


class _Flow(keras.layers.Layer):
  """A chain of conditional TFP bijectors: (z_0 [..., D], h [..., H]) -> (z_T, sum log|det|).

  Subclasses give `bijectors(context)`. Every log-det is computed by TFP, not
  assumed (a Householder step's is 0, which the tests check against autodiff).
  """

  def bijectors(self, context):
    raise NotImplementedError

  def call(self, z, context) -> Tuple[tf.Tensor, tf.Tensor]:
    log_det = tf.zeros(tf.shape(z)[:-1], z.dtype)
    for bijector in self.bijectors(context):
      log_det += bijector.forward_log_det_jacobian(z, event_ndims=1)
      z = bijector.forward(z)
    return z, log_det


class InverseAutoregressiveFlow(_Flow):
  """T IAF steps from TFP bijectors: (z_0 [..., D], h [..., H]) -> (z_T, sum log|det|)."""

  def __init__(self, num_steps: int, latent_dim: int, context_dim: int, hidden_units: int,
               seed=None, **kwargs):
    super().__init__(**kwargs)
    self.steps = [MADE(latent_dim, hidden_units, context_dim, reverse=bool(t % 2),
                       seed=None if seed is None else seed + 10 * t, name=f'made_{t}')
                  for t in range(num_steps)]
    networks._track_for_checkpoints(self, 'steps', self.steps)  # pylint: disable=protected-access

  def bijectors(self, context):
    """The T steps as TFP bijectors for this context (IAF = inverted MAF)."""
    return [tfb.Invert(tfb.MaskedAutoregressiveFlow(
        shift_and_log_scale_fn=functools.partial(_made_params, made, context)))
            for made in self.steps]


class HouseholderFlow(_Flow):
  """T Householder reflections: (z_0 [..., D], h [..., H]) -> (z_T, log|det| = 0)."""

  def __init__(self, num_steps: int, latent_dim: int, context_dim: int, seed=None, **kwargs):
    super().__init__(**kwargs)
    self.maps = [keras.layers.Dense(
        latent_dim, name=f'v_{t}', kernel_initializer=keras.initializers.GlorotUniform(
            seed=None if seed is None else seed + t))
                 for t in range(num_steps)]
    networks._track_for_checkpoints(self, 'maps', self.maps)  # pylint: disable=protected-access
    shape = (None, context_dim)
    for layer in self.maps:
      layer.build(shape)
      shape = (None, latent_dim)

  def reflection_axes(self, context):
    """v_1 .. v_T: [..., D] each."""
    axes, v = [], context
    for layer in self.maps:
      v = layer(v)
      axes.append(v)
    return axes

  def bijectors(self, context):
    return [tfb.ScaleMatvecLinearOperator(
        tf.linalg.LinearOperatorHouseholder(v, is_square=True))
            for v in self.reflection_axes(context)]



def build_flow(method: str, num_steps: int, latent_dim: int, context_dim: int,
               hidden_units: int, seed: int):
  """The flow of `method` ('iaf' or 'hf') with its variables created."""
  if method == 'iaf':
    flow = InverseAutoregressiveFlow(num_steps, latent_dim, context_dim, hidden_units,
                                     seed=seed, name='flow')
  elif method == 'hf':
    flow = HouseholderFlow(num_steps, latent_dim, context_dim, seed=seed, name='flow')
  else:
    raise ValueError(f'no flow for method {method!r}')
  z = tf.zeros([1, latent_dim])
  flow(z, tf.zeros([1, context_dim]))  # creates every variable
  return flow
