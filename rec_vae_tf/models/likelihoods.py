"""Pixel likelihoods p(x|z) for decoders, from the decoder's raw output.

RME.md, "Data and models": colour images need a proper likelihood, reported in
nats per image and bits per dimension. This module turns a decoder's output
("params") into log p(x|z) summed over pixels, for

  * binary images: Bernoulli(logits), the likelihood of `networks.BernoulliDecoder`;
  * 8-bit images: the discretized logistic of PixelCNN++ (Salimans et al.
    2017), per pixel and channel ("subpixel"), optionally a mixture of K of
    them per subpixel.

Discretized logistic. The 256 pixel values k = 0..255 are mapped to bin
centres c_k = 2 k / 255 - 1 in [-1, 1], bins of half-width h = 1/255. With
location mu, scale s = exp(log_scale) and the logistic CDF F = sigmoid:

  p(k) = F((c_k + h - mu) / s) - F((c_k - h - mu) / s)   0 < k < 255
  p(0) = F((c_0 + h - mu) / s)                           the whole left tail
  p(255) = 1 - F((c_255 - h - mu) / s)                   the whole right tail

so the 256 probabilities sum to exactly one. In float32 the difference of two
sigmoids cancels catastrophically in the tails (PixelCNN++ then falls back to
the density at the bin centre times the bin width, "the mid-point
approximation", when the difference is below 1e-5). Here the bin mass is
computed in log space without any cancellation instead, using
sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(-(a - b))):

  log p(k) = log_sigmoid(a) + log_sigmoid(-b) + log(-expm1(-(a - b)))
  a = (c_k + h - mu) / s,  b = (c_k - h - mu) / s

Every term is a softplus form or expm1 of a positive number: no cancellation
for any (mu, s, k), so no mid-point fallback is needed
(`tests/test_likelihoods.py` checks against a float64 reference in the tails
where the PixelCNN++ fallback would be used). log_scale is clipped to
[MIN_LOG_SCALE, MAX_LOG_SCALE] as PixelCNN++ clips it below: the smallest scale
still puts 97% of a subpixel's mass in one bin, and the bounds keep 1/s and
(x - mu)/s finite in float32.

Mixtures: p(k) = sum_j pi_j p_j(k), pi = softmax(mixture logits), one mixture
per subpixel (channels are independent given z; PixelCNN++'s linear coupling
of the colour channels is not used).

Pixel values. `x` holds 8-bit pixel values as floats on the grid
{0, x_max/255, 2 x_max/255, ..., x_max}: x_max = 255 for raw uint8 values cast
to float (the default), x_max = 1 for pixel / 255. Each value is rounded to its
bin, so x must lie on that grid (pixel / 256 scaling, as the MNIST pickle uses,
is not on it).

Parameter layout. A likelihood with n parameters per subpixel reads params
[..., P * n], the row-major flattening of [..., P, n] (subpixel-major), which is
what a conv decoder's [N, H, W, C * n] output gives by a plain reshape when its
channels are ordered (C, n). For the logistic n = 2: (loc, log_scale); for a
K-mixture n = 3K: (K logits, K locs, K log_scales). loc and log_scale are in
the [-1, 1] units above.

Shapes: P subpixels (H * W * C), n parameters per subpixel, K mixture
components, "..." any leading (sample, batch, component) axes.
"""

import math
from typing import Union

import tensorflow as tf

from rec_vae_tf.models import networks

NUM_BINS = 256
# log_scale bounds in [-1, 1] pixel units: exp(-7) ~ 1e-3 (a quarter of a bin's
# half-width 1/255; PixelCNN++'s lower clip) to exp(7) ~ 1e3 (flat over the range).
MIN_LOG_SCALE = -7.0
MAX_LOG_SCALE = 7.0

# 'discretized_logistic' (the name `datasets.DatasetSpec.likelihood` uses) is 'logistic'.
LIKELIHOODS = ('bernoulli', 'logistic', 'discretized_logistic', 'logistic_mixture')


def bits_per_dim(nats, num_dims: int):
  """Bits per dimension of a log-likelihood in nats per image: -nats / (num_dims * ln 2).

  Args:
    nats: log p(x) per image in nats (a number, array or tensor; usually negative).
    num_dims: dimensions per image, H * W * C (3072 for 32x32x3).
  Returns:
    The (positive, for a log-likelihood below 0) bits per dimension, same type as `nats`.
  """
  return -nats / (num_dims * math.log(2.0))


def discretized_logistic_log_prob(x, loc, log_scale, x_max: float = 255.0):
  """log p(x) per subpixel under a discretized logistic (module docstring).

  Args:
    x: pixel values on the grid {0, x_max/255, ..., x_max}; broadcasts against loc.
    loc: location in [-1, 1] units.
    log_scale: log scale in the same units; clipped to [MIN_LOG_SCALE, MAX_LOG_SCALE].
    x_max: the value of pixel 255 in x.
  Returns:
    float32 log-probabilities, the broadcast shape of (x, loc, log_scale).
  """
  x = tf.cast(x, tf.float32)
  loc = tf.cast(loc, tf.float32)
  log_scale = tf.clip_by_value(tf.cast(log_scale, tf.float32), MIN_LOG_SCALE, MAX_LOG_SCALE)
  last = NUM_BINS - 1
  k = tf.round(x * (last / x_max))  # bin index 0..255
  inv_scale = tf.exp(-log_scale)
  # Bin edges as (k +- 1/2) * 2/255 - 1: bin k's upper edge is the same float
  # as bin k+1's lower edge, so the 256 masses telescope to one in float32.
  upper = ((k + 0.5) * (2.0 / last) - 1.0 - loc) * inv_scale  # a
  lower = ((k - 0.5) * (2.0 / last) - 1.0 - loc) * inv_scale  # b
  log_cdf_upper = tf.math.log_sigmoid(upper)  # log F(a)
  log_sf_lower = tf.math.log_sigmoid(-lower)  # log (1 - F(b))
  # a - b, exactly (2/255) / s up to rounding; the floor only acts for absurd
  # |loc| (~1e5) where the rounding of edge - loc would leave no width at all.
  width = tf.maximum(upper - lower, (1.0 / last) * inv_scale)
  log_bin = log_cdf_upper + log_sf_lower + tf.math.log(-tf.math.expm1(-width))
  # Every branch is finite, so tf.where's unused branches give finite (zero) gradients.
  return tf.where(k <= 0, log_cdf_upper, tf.where(k >= last, log_sf_lower, log_bin))


class Bernoulli:
  """Bernoulli(logits) per pixel; params [..., P] are the logits (n = 1); x in {0, 1}."""

  name = 'bernoulli'
  params_per_dim = 1
  x_max = 1.0

  def log_prob_of_params(self, x, params):
    """sum_p log p(x_p | params): x broadcasts against params [..., P] -> [...] float32."""
    return networks.bernoulli_log_prob(x, params)

  def mean(self, params):
    """E[x] per pixel: sigmoid(logits), [..., P]."""
    return tf.sigmoid(tf.cast(params, tf.float32))


class DiscretizedLogistic:
  """A discretized logistic per subpixel, or a mixture of `num_mixtures` of them.

  Args:
    num_mixtures: K; 1 is a single logistic with params (loc, log_scale).
    x_max: the value of pixel 255 in x (255 for raw values, 1 for pixel / 255).
  """

  def __init__(self, num_mixtures: int = 1, x_max: float = 255.0):
    if num_mixtures < 1:
      raise ValueError(f'num_mixtures must be >= 1, got {num_mixtures}')
    if not x_max > 0:
      raise ValueError(f'x_max must be > 0, got {x_max}')
    self.num_mixtures = int(num_mixtures)
    self.x_max = float(x_max)
    self.name = 'logistic' if num_mixtures == 1 else 'logistic_mixture'
    self.params_per_dim = 2 if num_mixtures == 1 else 3 * num_mixtures

  def _split(self, params):
    """params [..., P * n] -> (logits or None, loc, log_scale), each [..., P, K] (K = 1: [..., P])."""
    params = tf.cast(params, tf.float32)
    shape = tf.concat([tf.shape(params)[:-1], [-1, self.params_per_dim]], 0)
    p = tf.reshape(params, shape)  # [..., P, n]
    if self.num_mixtures == 1:
      return None, p[..., 0], p[..., 1]  # [..., P] each
    k = self.num_mixtures
    return p[..., :k], p[..., k:2 * k], p[..., 2 * k:]  # [..., P, K] each

  def log_prob_per_dim(self, x, params):
    """log p(x_p | params) per subpixel: x [..., P] broadcasts against params [..., P * n] -> [..., P]."""
    logits, loc, log_scale = self._split(params)
    x = tf.cast(x, tf.float32)
    if logits is None:
      return discretized_logistic_log_prob(x, loc, log_scale, self.x_max)  # [..., P]
    log_p = discretized_logistic_log_prob(x[..., None], loc, log_scale, self.x_max)  # [..., P, K]
    return tf.reduce_logsumexp(tf.nn.log_softmax(logits, -1) + log_p, -1)  # [..., P]

  def log_prob_of_params(self, x, params):
    """log p(x | params) summed over subpixels: x [..., P], params [..., P * n] -> [...] float32."""
    return tf.reduce_sum(self.log_prob_per_dim(x, params), -1)

  def mean(self, params):
    """A point summary for pictures, [..., P] in x units: the (mixture-weighted)
    location mapped to [0, x_max] and clipped. That is the mean of the
    continuous logistic(s) clipped to the pixel range, not the exact mean of
    the discretized distribution (which differs in the two edge bins)."""
    logits, loc, _ = self._split(params)
    pixel = tf.clip_by_value((loc + 1.0) * 0.5, 0.0, 1.0) * self.x_max
    if logits is None:
      return pixel  # [..., P]
    return tf.reduce_sum(tf.nn.softmax(logits, -1) * pixel, -1)  # [..., P]


Likelihood = Union[Bernoulli, DiscretizedLogistic]


def get(likelihood: Union[str, Likelihood], *, num_mixtures: int = 5,
        x_max: float = 255.0) -> Likelihood:
  """A likelihood by name (LIKELIHOODS), or the object itself.

  Args:
    likelihood: a name in LIKELIHOODS or a likelihood object (returned as is).
    num_mixtures: K for 'logistic_mixture' (PixelCNN++ uses 10 with coupled
      channels; 5 per subpixel here).
    x_max: the value of pixel 255 in the data (logistic likelihoods only).
  Raises:
    ValueError: an unknown name.
  """
  if not isinstance(likelihood, str):
    return likelihood
  if likelihood == 'bernoulli':
    return Bernoulli()
  if likelihood in ('logistic', 'discretized_logistic'):
    return DiscretizedLogistic(1, x_max)
  if likelihood == 'logistic_mixture':
    return DiscretizedLogistic(num_mixtures, x_max)
  raise ValueError(f'likelihood must be one of {LIKELIHOODS}, got {likelihood!r}')
