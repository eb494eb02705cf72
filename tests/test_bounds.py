"""The importance-weighted mixture bound, DReG and the stratified estimator (golden values).

Sizes S=2, B=3, M=4, D=5 (pairwise distinct); closed forms where they exist.
"""
import math

import numpy as np
import pytest
import tensorflow as tf

from rec_vae_tf import methods
from rec_vae_tf.evaluation import likelihood
from rec_vae_tf.methods import objective
from rec_vae_tf.models import networks
from rec_vae_tf.models import posterior
from tests.conftest import B, D, M, S


def _np_log_normal(z, loc, scale):
  return np.sum(-0.5 * ((z - loc) / scale) ** 2 - np.log(scale) - 0.5 * math.log(2 * math.pi), -1)


def _np_logsumexp(a, axis):
  top = np.max(a, axis=axis, keepdims=True)
  return np.squeeze(top, axis) + np.log(np.sum(np.exp(a - top), axis=axis))


def _gaussian_likelihood(x, sigma):
  """log p(x|z) = log N(x; z, sigma^2 I) for z [..., B, M, D] -> [..., B, M]."""
  return lambda z: tf.reduce_sum(
      -0.5 * tf.square((x[:, None] - z) / sigma) - math.log(sigma) - 0.5 * math.log(2 * math.pi), -1)


def _inputs(seed):
  rng = np.random.default_rng(seed)
  f = lambda *shape: tf.constant(rng.standard_normal(shape), tf.float32)
  loc, scale = f(B, M, D), tf.exp(0.3 * f(B, M, D))
  return f(B, D), loc, scale, f(B, M), f(S, B, M, D)


@pytest.mark.parametrize('num_active', [1, 3, M])
def test_iw_bound_equals_a_hand_computation(num_active):
  x, loc, scale, eps_logit, noise = _inputs(0)
  terms = objective.rme_terms(_gaussian_likelihood(x, 0.7), loc, scale, eps_logit, noise,
                              tf.constant(num_active), 0.1, 0.05, importance_weighted=True)
  assert terms.mixture_iw.shape == (B,)
  loc_, scale_, noise_ = loc.numpy(), scale.numpy(), noise.numpy()
  z = loc_[None] + scale_[None] * noise_  # [S, B, M, D]
  log_alpha = terms.log_alpha.numpy().astype(np.float64)  # [B, M], checked in test_posterior
  log_joint = (np.sum(-0.5 * ((x.numpy()[None, :, None] - z) / 0.7) ** 2 - math.log(0.7)
                      - 0.5 * math.log(2 * math.pi), -1) + _np_log_normal(z, 0.0, 1.0))
  log_q_each = _np_log_normal(z[:, :, None], loc_[None, :, :, None], scale_[None, :, :, None])
  log_q = _np_logsumexp(log_alpha[None, :, :, None] + log_q_each, 2)  # [S, B, M_j]
  active = np.arange(M) < num_active
  want = _np_logsumexp((log_alpha[None] + log_joint - log_q)[:, :, active].transpose(1, 0, 2)
                       .reshape(B, -1), 1) - math.log(S)
  np.testing.assert_allclose(terms.mixture_iw.numpy(), want, rtol=1e-5, atol=1e-4)


def test_iw_bound_is_at_least_the_stratified_elbo():
  for seed in range(20):
    x, loc, scale, eps_logit, noise = _inputs(seed)
    terms = objective.rme_terms(_gaussian_likelihood(x, 0.5), loc, scale, eps_logit, noise,
                                tf.constant(3), 0.1, 0.05, importance_weighted=True)
    assert np.all(terms.mixture_iw.numpy() >= terms.mixture_elbo.numpy() - 1e-4), seed
  # One component and one sample: the bound is the ELBO.
  x, loc, scale, eps_logit, noise = _inputs(1)
  one = objective.rme_terms(_gaussian_likelihood(x, 0.5), loc, scale, eps_logit, noise[:1],
                            tf.constant(1), 0.0, 0.0, importance_weighted=True)
  np.testing.assert_allclose(one.mixture_iw.numpy(), one.mixture_elbo.numpy(), rtol=1e-6)


def test_iw_bound_is_log_p_x_for_an_exact_posterior():
  """p(z) = N(0, I), p(x|z) = N(x; z, s^2 I): every component is the exact posterior."""
  sigma2 = 0.49
  x, _, _, eps_logit, noise = _inputs(2)
  post_loc = tf.tile((x / (1 + sigma2))[:, None], [1, M, 1])  # [B, M, D]
  post_scale = tf.fill([B, M, D], math.sqrt(sigma2 / (1 + sigma2)))
  terms = objective.rme_terms(_gaussian_likelihood(x, math.sqrt(sigma2)), post_loc, post_scale,
                              eps_logit, noise, tf.constant(M), 0.0, 0.0,
                              importance_weighted=True)
  log_p_x = _np_log_normal(x.numpy(), 0.0, math.sqrt(1 + sigma2))  # [B]
  np.testing.assert_allclose(terms.mixture_iw.numpy(), log_p_x, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(terms.mixture_elbo.numpy(), log_p_x, rtol=1e-5, atol=1e-4)


def test_dreg_gradient_matches_the_direct_formula():
  """d/dloc, d/dscale of the surrogate = sum_s wt_s^2 dlog w/dz_s dz_s/dparam (one component)."""
  sigma = 0.8
  x, loc, scale, eps_logit, noise = _inputs(3)
  loc, scale, noise = tf.Variable(loc[:, :1]), tf.Variable(scale[:, :1]), noise[:, :, :1]
  with tf.GradientTape() as tape:
    terms = objective.rme_terms(_gaussian_likelihood(x, sigma), loc, scale, eps_logit[:, :1],
                                noise, tf.constant(1), 0.0, 0.0, dreg=True)
    surrogate = tf.reduce_sum(terms.iwae_dreg)
  grad_loc, grad_scale = tape.gradient(surrogate, [loc, scale])
  z = (loc[None] + scale[None] * noise).numpy()  # [S, B, 1, D]
  l, s, e = loc.numpy()[None], scale.numpy()[None], noise.numpy()
  xs = x.numpy()[None, :, None]
  dlogw_dz = (xs - z) / sigma**2 - z + (z - l) / s**2  # log p(x|z) + log p(z) - log q(z; fixed)
  log_w = (_np_log_normal(xs, z, sigma) + _np_log_normal(z, 0.0, 1.0) -
           _np_log_normal(z, l, s))  # [S, B, 1]
  wt = np.exp(log_w - _np_logsumexp(log_w, 0)[None])  # normalized over S
  want_loc = np.sum(wt[..., None] ** 2 * dlogw_dz, 0)
  want_scale = np.sum(wt[..., None] ** 2 * dlogw_dz * e, 0)
  np.testing.assert_allclose(grad_loc.numpy(), want_loc, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(grad_scale.numpy(), want_scale, rtol=1e-4, atol=1e-5)
  # The surrogate's value is no bound; the IWAE bound in the same terms is unchanged.
  plain = objective.rme_terms(_gaussian_likelihood(x, sigma), loc, scale, eps_logit[:, :1],
                              noise, tf.constant(1), 0.0, 0.0)
  np.testing.assert_array_equal(terms.iwae.numpy(), plain.iwae.numpy())


def _quadrature_log_p_x(decoder, x):
  """log p(x) = log int p(x|z) N(z; 0, 1) dz for a 1-d latent, by the trapezoid rule."""
  z = np.linspace(-9.0, 9.0, 6001, dtype=np.float32)
  log_p_x_given_z = decoder.log_prob(tf.constant(x), tf.constant(z)[:, None, None, None])
  log_p_x_given_z = log_p_x_given_z.numpy()[:, :, 0].astype(np.float64)  # [Z, B]
  log_f = log_p_x_given_z - 0.5 * z[:, None].astype(np.float64) ** 2 - 0.5 * math.log(2 * math.pi)
  top = log_f.max(0)
  return top + np.log(np.trapezoid(np.exp(log_f - top), z.astype(np.float64), axis=0))


def _wide_proposal_networks():
  """1-d latent; three components N(-0.6 | 0 | 0.6, 1.5^2), wider than the posterior.

  A proposal wider than the posterior (which is narrower than the prior N(0, 1))
  bounds the importance weights, so large-K estimates settle quickly.
  """
  encoder, decoder = networks.build_networks(3, (4,), 1, 'amortized', seed=5, num_pixels=6)
  wide = math.log(math.expm1(1.5 - networks.MIN_SCALE))  # softplus(wide) + MIN_SCALE = 1.5
  for v in (encoder.loc_head.kernel, encoder.scale_head.kernel):
    v.assign(tf.zeros_like(v))
  encoder.loc_head.bias.assign(tf.reshape(tf.constant([-0.6, 0.0, 0.6]), [3, 1]))
  encoder.scale_head.bias.assign(tf.fill(encoder.scale_head.bias.shape, wide))
  return encoder, decoder


def test_stratified_estimator_is_unbiased_and_both_estimators_converge():
  encoder, decoder = _wide_proposal_networks()
  x = np.random.default_rng(4).integers(0, 2, [B, 6]).astype(np.float32)
  exact = _quadrature_log_p_x(decoder, x)  # [B]
  ev = likelihood.Evaluator(methods.for_networks(encoder, decoder), xla=False)
  # Unbiased in p(x): the mean of exp(estimate) over many small-K draws is p(x).
  draws = np.stack([ev.stratified_log_likelihood(tf.constant(x), tf.constant(3), 3, 3, seed=s)
                    for s in range(400)])  # [400, B], one sample per component
  p_hat = np.exp(draws - exact[None])  # estimate / p(x)
  np.testing.assert_allclose(p_hat.mean(0), 1.0, atol=4 * p_hat.std(0).max() / math.sqrt(400))
  assert p_hat.std(0).max() > 0  # a random estimate, not a constant
  # Large K: both estimators are at log p(x).
  for estimate in (ev.stratified_log_likelihood, ev.log_likelihood):
    np.testing.assert_allclose(estimate(tf.constant(x), tf.constant(3), 6000, 600, seed=1),
                               exact, atol=0.02)


def test_mean_log_likelihood_reports_the_standard_error_of_the_per_example_estimates():
  encoder, decoder = networks.build_networks(M, (4,), D, 'amortized', seed=1, num_pixels=6)
  ev = likelihood.Evaluator(methods.for_networks(encoder, decoder), xla=False)
  x = np.random.default_rng(0).integers(0, 2, [7, 6]).astype(np.float32)
  data = tf.data.Dataset.from_tensor_slices(x).batch(3)
  for estimator, fn in (('mixture', ev.log_likelihood),
                        ('stratified', ev.stratified_log_likelihood)):
    got = likelihood.mean_log_likelihood(ev, data, tf.constant(M), num_samples=8, chunk=4,
                                         seed=2, estimator=estimator)
    per = np.concatenate([fn(tf.constant(b), tf.constant(M), 8, 4, seed=2 * 100003 + i)
                          for i, b in enumerate(np.split(x, [3, 6]))])
    assert got.num_examples == 7
    np.testing.assert_allclose(got.mean, per.mean(), rtol=1e-12)
    np.testing.assert_allclose(got.standard_error, per.std(ddof=1) / math.sqrt(7), rtol=1e-9)
  with pytest.raises(ValueError, match='estimator'):
    likelihood.mean_log_likelihood(ev, data, tf.constant(M), num_samples=8, chunk=4, seed=2,
                                   estimator='nope')


def test_stratified_weights_use_only_active_components():
  encoder, decoder = networks.build_networks(M, (4,), D, 'amortized', seed=1, num_pixels=6)
  ev = likelihood.Evaluator(methods.for_networks(encoder, decoder), xla=False)
  x = tf.constant(np.random.default_rng(0).integers(0, 2, [B, 6]).astype(np.float32))
  one = ev.stratified_log_likelihood(x, tf.constant(1), 40, 160, seed=0)  # one chunk
  # With one active component the stratified estimator is the plain one of that component.
  enc = encoder(x)
  eps = tf.random.stateless_normal([40, B, M, D], seed=tf.constant([0, 0], tf.int32))
  z = enc.loc[None, :, 0] + enc.scale[None, :, 0] * eps[:, :, 0]  # [40, B, D]
  log_w = (decoder.log_prob(x, z[:, :, None])[..., 0] + posterior.standard_normal_log_prob(z) -
           posterior.diag_normal_log_prob(z, enc.loc[None, :, 0], enc.scale[None, :, 0]))
  want = tf.reduce_logsumexp(log_w, 0).numpy() - math.log(40)
  np.testing.assert_allclose(one, want, rtol=1e-5)
