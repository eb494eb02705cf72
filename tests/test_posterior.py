"""Closed-form checks of the recursive mixture posterior."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from rec_vae_tf.models import posterior
from tests.conftest import B, D, M, S

tfd = tfp.distributions


def _random(shape, seed, scale=1.0):
  return tf.constant(np.random.default_rng(seed).normal(size=shape) * scale, tf.float32)


def _weights_by_hand(eps_logit, n):
  """alpha_j = eps_j prod_{j<i<=n} (1 - eps_i), eps_1 = 1, in plain numpy."""
  eps = 1 / (1 + np.exp(-eps_logit.numpy().astype(np.float64)))
  eps[:, 0] = 1.0
  alpha = np.zeros_like(eps)
  for j in range(n):
    alpha[:, j] = eps[:, j] * np.prod(1 - eps[:, j + 1:n], axis=1)
  return alpha


@pytest.mark.parametrize('n', [1, 2, 3, 4])
def test_recursive_weights_match_the_recursion_and_sum_to_one(n):
  eps_logit = _random([B, M], 0, 2.0)
  log_alpha = posterior.recursive_log_weights(eps_logit, tf.constant(n))
  alpha = np.exp(log_alpha.numpy().astype(np.float64))
  np.testing.assert_allclose(alpha, _weights_by_hand(eps_logit, n), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(alpha.sum(-1), np.ones(B), rtol=1e-6)
  assert np.all(log_alpha.numpy()[:, n:] == posterior.INACTIVE_LOG_WEIGHT)
  assert np.all(np.isfinite(log_alpha.numpy()))


def test_predecessor_weights_are_the_mixture_before_each_component():
  eps_logit = _random([B, M], 1, 2.0)
  table = posterior.predecessor_log_weights(eps_logit).numpy()  # [B, M_i, M_m]
  assert table.shape == (B, M, M)
  assert np.all(table[:, :, 0] == posterior.INACTIVE_LOG_WEIGHT)
  for m in range(1, M):
    expected = posterior.recursive_log_weights(eps_logit, tf.constant(m)).numpy()
    np.testing.assert_allclose(table[:, :m, m], expected[:, :m], rtol=1e-5, atol=1e-6)
    assert np.all(table[:, m:, m] == posterior.INACTIVE_LOG_WEIGHT)


def test_log_prob_table_matches_tfp_normals():
  z = _random([S, B, M, D], 2)
  loc, scale = _random([B, M, D], 3), tf.exp(_random([B, M, D], 4, 0.3))
  table = posterior.component_log_prob_table(z, loc, scale).numpy()  # [S, B, M_i, M_j]
  assert table.shape == (S, B, M, M)
  comps = posterior.components(loc, scale)  # batch [B, M]
  for j in range(M):
    expected = comps.log_prob(z[:, :, j, None, :]).numpy()  # [S, B, M_i]
    np.testing.assert_allclose(table[:, :, :, j], expected, rtol=1e-5, atol=1e-4)


def test_log_q_equals_handwritten_logsumexp_and_tfp_mixture():
  z = _random([S, B, M, D], 5)
  loc, scale = _random([B, M, D], 6), tf.exp(_random([B, M, D], 7, 0.3))
  log_alpha = posterior.recursive_log_weights(_random([B, M], 8), tf.constant(3))
  table = posterior.component_log_prob_table(z, loc, scale)
  ours = posterior.mixture_log_prob(log_alpha, table).numpy()  # [S, B, M_j]
  a = log_alpha.numpy().astype(np.float64)
  t = table.numpy().astype(np.float64)
  for s in range(S):
    for b in range(B):
      for j in range(M):
        terms = a[b] + t[s, b, :, j]
        hand = terms.max() + math.log(np.exp(terms - terms.max()).sum())
        assert ours[s, b, j] == pytest.approx(hand, rel=1e-5, abs=1e-4)
  mix = posterior.q_z_given_x(log_alpha, loc, scale)
  for j in range(M):
    np.testing.assert_allclose(mix.log_prob(z[:, :, j, :]).numpy(), ours[:, :, j],
                               rtol=1e-5, atol=1e-4)


def test_one_component_mixture_equals_its_gaussian():
  loc, scale = _random([B, 1, D], 9), tf.exp(_random([B, 1, D], 10, 0.3))
  log_alpha = posterior.recursive_log_weights(_random([B, 1], 11), tf.constant(1))
  mix = posterior.q_z_given_x(log_alpha, loc, scale)
  gauss = tfd.MultivariateNormalDiag(loc[:, 0], scale[:, 0])
  z = _random([S, B, D], 12)
  np.testing.assert_allclose(mix.log_prob(z).numpy(), gauss.log_prob(z).numpy(), rtol=1e-6, atol=1e-5)


def test_weight_entropy():
  log_alpha = tf.math.log(tf.constant([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))
  log_alpha = tf.where(tf.math.is_inf(log_alpha), posterior.INACTIVE_LOG_WEIGHT, log_alpha)
  np.testing.assert_allclose(posterior.weight_entropy(log_alpha).numpy(), [math.log(2), 0.0], atol=1e-6)
