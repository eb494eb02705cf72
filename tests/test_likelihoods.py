"""Pixel likelihoods: normalisation over all 256 values, edge bins, tails, bits per dim."""
import math

import numpy as np
import pytest
import tensorflow as tf

from rec_vae_tf.models import likelihoods
from rec_vae_tf.models import networks
from tests.conftest import B, S

VALUES = np.arange(256, dtype=np.float32)
LOCS = [-3.0, -1.2, -1.0, -0.99, -0.3, 0.0, 0.5, 0.999, 1.0, 1.004, 3.0, 40.0, 1e6]
LOG_SCALES = [-12.0, -7.0, -5.0, -2.0, 0.0, 2.0, 7.0, 12.0]  # outside [-7, 7]: clipped


def _expit(t):
  """The logistic CDF in float64 without overflow."""
  t = np.asarray(t, np.float64)
  e = np.exp(-np.abs(t))
  return np.where(t >= 0, 1 / (1 + e), e / (1 + e))


def _grid():
  """(loc, log_scale) pairs of every combination: [G] each."""
  loc, log_scale = np.meshgrid(LOCS, LOG_SCALES, indexing='ij')
  return loc.ravel().astype(np.float32), log_scale.ravel().astype(np.float32)


def _single_params(loc, log_scale):
  """[G] locations and log scales -> params [G * 2], (loc, log_scale) per subpixel."""
  return tf.constant(np.stack([loc, log_scale], -1).ravel())


def test_bits_per_dim():
  assert likelihoods.bits_per_dim(-3072 * math.log(2.0) * 3.5, 3072) == pytest.approx(3.5)
  nats = np.array([-100.0, -2000.0])
  np.testing.assert_allclose(likelihoods.bits_per_dim(nats, 784), -nats / (784 * np.log(2)))
  # Back to nats: log p(x) = -bpd * P * ln 2.
  np.testing.assert_allclose(-likelihoods.bits_per_dim(nats, 784) * 784 * np.log(2), nats)
  bpd = likelihoods.bits_per_dim(tf.constant(-8.0 * 12 * math.log(2.0)), 12)
  assert float(bpd) == pytest.approx(8.0)  # a uniform 8-bit pixel costs 8 bits


@pytest.mark.parametrize('x_max', [255.0, 1.0])
def test_single_logistic_sums_to_one_over_all_256_values(x_max):
  loc, log_scale = _grid()
  lik = likelihoods.DiscretizedLogistic(1, x_max)
  x = np.broadcast_to(VALUES[:, None] * (x_max / 255), (256, loc.size))  # [256, G]
  log_p = lik.log_prob_per_dim(tf.constant(x), _single_params(loc, log_scale)).numpy()  # [256, G]
  assert np.all(np.isfinite(log_p)) and np.all(log_p <= 0)
  np.testing.assert_allclose(np.exp(log_p).sum(0), 1.0, atol=1e-5)


def test_mixture_sums_to_one_over_all_256_values():
  k, g = 3, 40
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, [g, k])
  locs = rng.choice(LOCS, [g, k])
  log_scales = rng.choice(LOG_SCALES, [g, k])
  params = tf.constant(np.concatenate([logits, locs, log_scales], -1).ravel(), tf.float32)
  lik = likelihoods.DiscretizedLogistic(k)
  log_p = lik.log_prob_per_dim(tf.constant(np.broadcast_to(VALUES[:, None], (256, g))),
                               params).numpy()  # [256, G]
  np.testing.assert_allclose(np.exp(log_p).sum(0), 1.0, atol=1e-5)


def test_edge_bins_take_the_tails():
  loc, log_scale, h = 0.1, -1.5, 1 / 255
  lik = likelihoods.DiscretizedLogistic(1)
  params = tf.constant([loc, log_scale] * 2)
  log_p = lik.log_prob_per_dim(tf.constant([0.0, 255.0]), params).numpy()
  s = math.exp(log_scale)
  np.testing.assert_allclose(log_p[0], np.log(_expit((-1 + h - loc) / s)), rtol=1e-6)
  np.testing.assert_allclose(log_p[1], np.log(_expit(-(1 - h - loc) / s)), rtol=1e-6)


def _reference_log_prob(k, loc, log_scale):
  """Float64 log p(k), with survival functions in the right tail so nothing cancels."""
  s = np.exp(np.clip(log_scale, likelihoods.MIN_LOG_SCALE, likelihoods.MAX_LOG_SCALE))
  centre, h = 2 * k / 255 - 1, 1 / 255
  a, b = (centre + h - loc) / s, (centre - h - loc) / s
  right = centre > loc
  mass = np.where(right, _expit(-b) - _expit(-a), _expit(a) - _expit(b))
  mass = np.where(k == 0, _expit(a), np.where(k == 255, _expit(-b), mass))
  return np.log(mass)


def _pixelcnn_log_prob(k, loc, log_scale):
  """PixelCNN++'s float32 form: sigmoid differences, mid-point density below 1e-5."""
  x = tf.constant(2 * k / 255 - 1, tf.float32)
  log_scale = tf.maximum(tf.constant(log_scale, tf.float32), -7.0)
  centred, inv = x - loc, tf.exp(-log_scale)
  plus, minus = inv * (centred + 1 / 255), inv * (centred - 1 / 255)
  delta = tf.sigmoid(plus) - tf.sigmoid(minus)
  mid = inv * centred
  log_pdf_mid = mid - log_scale - 2 * tf.nn.softplus(mid)
  inner = tf.where(delta > 1e-5, tf.math.log(tf.maximum(delta, 1e-12)), log_pdf_mid - np.log(127.5))
  return tf.where(x < -0.999, plus - tf.nn.softplus(plus),
                  tf.where(x > 0.999, -tf.nn.softplus(minus), inner)).numpy()


def test_tails_match_a_float64_reference_where_pixelcnn_uses_the_mid_point():
  k = np.arange(256, dtype=np.float64)[:, None]  # [256, 1]
  loc = np.array([-0.8, 0.0, 0.6], np.float64)
  for log_scale in (-5.0, -3.0, -1.0):
    ref = _reference_log_prob(k, loc, log_scale)  # [256, 3]
    ours = likelihoods.discretized_logistic_log_prob(
        tf.constant(k, tf.float32), tf.constant(loc, tf.float32), log_scale).numpy()
    tail = ref < np.log(1e-5)
    assert tail.any() or log_scale == -1.0
    np.testing.assert_allclose(ours, ref, rtol=2e-6, atol=1e-4)
    if log_scale == -5.0:
      # Bins 1.2 scales wide: the mid-point density misses the bin mass by > 0.01 nats.
      pixelcnn = _pixelcnn_log_prob(k, loc.astype(np.float32), log_scale)
      assert np.abs(pixelcnn - ref)[tail].max() > 1e-2


def test_gradients_are_finite_at_extremes():
  loc, log_scale = _grid()
  loc_v, log_scale_v = tf.Variable(loc), tf.Variable(log_scale)
  for value in (0.0, 1.0, 127.0, 254.0, 255.0):
    with tf.GradientTape() as tape:
      log_p = likelihoods.discretized_logistic_log_prob(value, loc_v, log_scale_v)
      total = tf.reduce_sum(log_p)
    grads = tape.gradient(total, [loc_v, log_scale_v])
    assert np.isfinite(total.numpy())
    for g in grads:
      assert np.all(np.isfinite(g.numpy()))


def test_mixture_of_identical_components_equals_one_logistic():
  rng = np.random.default_rng(1)
  p = 7
  loc, log_scale = rng.normal(0, 0.5, p), rng.normal(-2, 1, p)
  x = tf.constant(rng.integers(0, 256, [B, p]), tf.float32)
  single = likelihoods.DiscretizedLogistic(1).log_prob_of_params(
      x, tf.constant(np.stack([loc, log_scale], -1).ravel(), tf.float32))
  mix_params = np.stack([rng.normal(size=p), rng.normal(size=p), loc, loc, log_scale, log_scale],
                        -1).ravel()
  mixture = likelihoods.DiscretizedLogistic(2).log_prob_of_params(
      x, tf.constant(mix_params, tf.float32))
  np.testing.assert_allclose(mixture.numpy(), single.numpy(), rtol=1e-5)


def test_leading_axes_broadcast_and_sum_over_pixels():
  p, k = 6, 2
  lik = likelihoods.DiscretizedLogistic(k, x_max=1.0)
  rng = np.random.default_rng(2)
  x = tf.constant(rng.integers(0, 256, [B, p]) / 255, tf.float32)  # [B, P]
  params = tf.constant(rng.normal(size=[S, B, p * 3 * k]), tf.float32)  # [S, B, P * n]
  log_p = lik.log_prob_of_params(x, params)
  assert log_p.shape == (S, B)
  per_dim = lik.log_prob_per_dim(x, params)
  assert per_dim.shape == (S, B, p)
  np.testing.assert_allclose(log_p.numpy(), per_dim.numpy().sum(-1), rtol=1e-6)
  for s in range(S):
    for b in range(B):
      np.testing.assert_allclose(log_p[s, b].numpy(),
                                 lik.log_prob_of_params(x[b], params[s, b]).numpy(), rtol=1e-6)
  xla = tf.function(lik.log_prob_of_params, jit_compile=True)(x, params)
  np.testing.assert_allclose(xla.numpy(), log_p.numpy(), rtol=1e-5)


def test_mean_and_bernoulli_and_names():
  lik = likelihoods.DiscretizedLogistic(1)
  mean = lik.mean(tf.constant([0.0, 0.0, -5.0, 1.0, 0.5, 3.0])).numpy()  # locs 0, -5, 0.5
  np.testing.assert_allclose(mean, [127.5, 0.0, 191.25], rtol=1e-6)
  mix = likelihoods.DiscretizedLogistic(2, x_max=1.0)
  # Subpixel logits (0, 0): equal weights of locations -1 and 1 -> 0.5.
  np.testing.assert_allclose(mix.mean(tf.constant([0.0, 0.0, -1.0, 1.0, 0.0, 0.0])).numpy(), [0.5])
  bern = likelihoods.get('bernoulli')
  logits = tf.constant([[0.3, -2.0, 4.0]])
  x = tf.constant([[1.0, 0.0, 1.0]])
  np.testing.assert_allclose(bern.log_prob_of_params(x, logits).numpy(),
                             networks.bernoulli_log_prob(x, logits).numpy())
  assert likelihoods.get('logistic').params_per_dim == 2
  assert likelihoods.get('discretized_logistic').params_per_dim == 2  # datasets' name
  assert likelihoods.get('logistic_mixture', num_mixtures=4).params_per_dim == 12
  assert likelihoods.get(lik) is lik
  with pytest.raises(ValueError, match='gaussian'):
    likelihoods.get('gaussian')
  with pytest.raises(ValueError, match='num_mixtures'):
    likelihoods.DiscretizedLogistic(0)
