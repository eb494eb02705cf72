"""RME objectives: closed forms, invariants and gradient isolation."""
import math

import numpy as np
import tensorflow as tf

from rec_vae_tf.methods import objective
from rec_vae_tf.models import posterior
from tests.conftest import B, D, M, S

P = 7  # pixels of the toy likelihood


def _random(shape, seed, scale=1.0):
  return tf.constant(np.random.default_rng(seed).normal(size=shape) * scale, tf.float32)


def _toy_decoder(seed=0):
  """A fixed linear-logit Bernoulli likelihood log p(x|z) <= 0 for x in {0, 1}."""
  w = _random([D, P], seed)
  x = tf.constant(np.random.default_rng(seed + 1).integers(0, 2, size=[B, P]), tf.float32)

  def log_p_x_given_z(z):  # [S, B, M, D] -> [S, B, M]
    logits = tf.einsum('sbmd,dp->sbmp', z, w)
    return tf.reduce_sum(x[None, :, None, :] * logits - tf.nn.softplus(logits), -1)
  return log_p_x_given_z


def _inputs(seed=0, num_components=M):
  loc = _random([B, num_components, D], seed + 10)
  scale = tf.exp(_random([B, num_components, D], seed + 11, 0.3))
  eps_logit = _random([B, num_components], seed + 12)
  noise = _random([S, B, num_components, D], seed + 13)
  return loc, scale, eps_logit, noise


def _terms(loc, scale, eps_logit, noise, n=M, kl_weight=0.3, prior_floor=0.05, seed=0):
  return objective.rme_terms(_toy_decoder(seed), loc, scale, eps_logit, noise, tf.constant(n),
                             kl_weight, prior_floor)


def test_shapes_and_inactive_components_are_zero():
  terms = _terms(*_inputs(), n=2)
  assert terms.component_objective.shape == (B, M)
  assert terms.component_elbo.shape == (B, M)
  assert terms.mixture_elbo.shape == (B,)
  assert np.all(terms.component_objective.numpy()[:, 2:] == 0)
  assert np.all(np.isfinite(terms.component_objective.numpy()))


def test_lambda_zero_gives_plain_elbo_per_component():
  terms = _terms(*_inputs(), kl_weight=0.0)
  np.testing.assert_allclose(terms.component_objective.numpy(), terms.component_elbo.numpy(), rtol=1e-6)


def test_component_objective_matches_definition_by_hand():
  loc, scale, eps_logit, noise = _inputs(1)
  lam, delta = 0.4, 0.1
  terms = _terms(loc, scale, eps_logit, noise, kl_weight=lam, prior_floor=delta, seed=1)
  z = loc[None] + scale[None] * noise  # [S, B, M, D]
  log_px = _toy_decoder(1)(z).numpy().astype(np.float64)
  log_pz = posterior.standard_normal_log_prob(z).numpy().astype(np.float64)
  table = posterior.component_log_prob_table(z, loc, scale).numpy().astype(np.float64)
  expected = np.zeros([B, M])
  for m in range(M):
    log_q_m = table[:, :, m, m]
    if m == 0:
      j = log_px[..., 0] + log_pz[..., 0] - log_q_m
    else:
      log_w = posterior.recursive_log_weights(eps_logit, tf.constant(m)).numpy()[:, :m]
      prev = np.log(np.exp(log_w[None] + table[:, :, :m, m]).sum(-1))
      floored = np.log((1 - delta) * np.exp(prev) + delta * np.exp(log_pz[..., m]))
      j = log_px[..., m] + log_pz[..., m] - (1 - lam) * log_q_m - lam * floored
    expected[:, m] = j.mean(0)
  np.testing.assert_allclose(terms.component_objective.numpy(), expected, rtol=1e-4, atol=1e-3)


def test_stratified_mixture_elbo_matches_definition_by_hand():
  loc, scale, eps_logit, noise = _inputs(2)
  n = 3
  terms = _terms(loc, scale, eps_logit, noise, n=n, seed=2)
  z = loc[None] + scale[None] * noise
  log_joint = (_toy_decoder(2)(z) + posterior.standard_normal_log_prob(z)).numpy().astype(np.float64)
  alpha = np.exp(posterior.recursive_log_weights(eps_logit, tf.constant(n)).numpy().astype(np.float64))
  table = posterior.component_log_prob_table(z, loc, scale).numpy().astype(np.float64)
  log_q = np.log(np.einsum('bi,sbij->sbj', alpha[:, :n], np.exp(table[:, :, :n, :])))  # [S, B, M]
  expected = (alpha[:, :n] * (log_joint - log_q)[:, :, :n].mean(0)).sum(-1)
  np.testing.assert_allclose(terms.mixture_elbo.numpy(), expected, rtol=1e-5, atol=1e-3)


def test_one_component_mixture_bound_is_the_elbo():
  terms = _terms(*_inputs(3, num_components=1), n=1, seed=3)
  np.testing.assert_allclose(terms.mixture_elbo.numpy(), terms.component_elbo.numpy()[:, 0], rtol=1e-6)
  np.testing.assert_allclose(terms.component_objective.numpy(), terms.component_elbo.numpy(), rtol=1e-6)


def test_gaussian_kl_closed_form_matches_monte_carlo():
  loc = _random([B, D], 4)
  scale = tf.exp(_random([B, D], 5, 0.3))
  z = loc + scale * tf.random.stateless_normal([200000, B, D], seed=[1, 2])
  mc = tf.reduce_mean(posterior.diag_normal_log_prob(z, loc, scale) -
                      posterior.standard_normal_log_prob(z), 0)
  np.testing.assert_allclose(mc.numpy(), objective.gaussian_kl_to_standard_normal(loc, scale).numpy(),
                             rtol=0.02, atol=0.02)


def test_iwae_with_one_sample_is_the_elbo_and_grows_with_k():
  log_w = _random([1, B], 6) * 10
  np.testing.assert_allclose(objective.iwae_bound(log_w).numpy(), log_w.numpy()[0], rtol=1e-6)
  many = _random([50, B], 7) * 3
  assert np.all(objective.iwae_bound(many).numpy() >= many.numpy().mean(0) - 1e-5)


def test_component_objective_moves_only_its_own_component():
  loc, scale, eps_logit, noise = _inputs(8)
  loc, scale, eps_logit = tf.Variable(loc), tf.Variable(scale), tf.Variable(eps_logit)
  for m in range(M):
    with tf.GradientTape() as tape:
      terms = _terms(loc, scale, eps_logit, noise, seed=8)
      j_m = tf.reduce_sum(terms.component_objective[:, m])
    g_loc, g_scale, g_eps = tape.gradient(j_m, [loc, scale, eps_logit])
    assert g_eps is None or np.all(g_eps.numpy() == 0), 'J_m must not train the weights'
    for g in (g_loc.numpy(), g_scale.numpy()):
      others = np.delete(g, m, axis=1)
      assert np.all(others == 0), f'J_{m + 1} leaked into other components'
      assert np.any(g[:, m] != 0), f'J_{m + 1} does not train its own component'


def test_mixture_bound_trains_the_weights():
  loc, scale, eps_logit, noise = _inputs(9)
  eps_logit = tf.Variable(eps_logit)
  with tf.GradientTape() as tape:
    terms = _terms(loc, scale, eps_logit, noise, n=3, seed=9)
    bound = tf.reduce_sum(terms.mixture_elbo)
  g = tape.gradient(bound, eps_logit).numpy()
  assert np.all(g[:, 0] == 0)  # eps_1 = 1 is not a parameter
  assert np.all(g[:, 1:3] != 0)
  assert np.all(g[:, 3:] == 0)  # inactive


def test_prior_floor_caps_the_kl_reward():
  """Qt_{m-1} >= delta p(z), so J_m <= log p(x|z) + (1-lambda)(log p(z) - log q_m) - lambda log delta."""
  loc, scale, eps_logit, noise = _inputs(10)
  far = loc + tf.constant([30.0, 0.0, 0.0, 0.0])[None, :, None]  # q_1 far from the prior
  lam, delta = 0.9, 0.05
  floored = _terms(far, scale, eps_logit, noise, kl_weight=lam, prior_floor=delta, seed=10)
  raw = _terms(far, scale, eps_logit, noise, kl_weight=lam, prior_floor=0.0, seed=10)
  assert np.all(np.isfinite(raw.component_objective.numpy()))
  z = far[None] + scale[None] * noise
  log_px = _toy_decoder(10)(z)
  log_pz = posterior.standard_normal_log_prob(z)
  log_q = posterior.diag_normal_log_prob(z, far[None], scale[None])
  cap = tf.reduce_mean(log_px + (1 - lam) * (log_pz - log_q), 0) - lam * math.log(delta)
  assert np.all(floored.component_objective.numpy()[:, 1:] <= cap.numpy()[:, 1:] + 1e-3)
  # Component 2 sits far from Q_1 = q_1: the raw KL reward is huge, the floored one is capped.
  assert np.all(raw.component_objective.numpy()[:, 1] > floored.component_objective.numpy()[:, 1] + 100)


def test_eager_and_tf_function_agree():
  args = _inputs(11)
  eager = _terms(*args, seed=11)
  compiled = tf.function(lambda *a: _terms(*a, seed=11), jit_compile=True)(*args)
  for a, b in zip(eager, compiled):
    if a is None:  # the optional bounds, not asked for
      assert b is None
      continue
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-4)


def test_boosted_relbo_matches_definition_by_hand():
  loc, scale, eps_logit, noise = _inputs(12)
  delta = 0.05
  relbo = objective.rme_terms(_toy_decoder(12), loc, scale, eps_logit, noise, tf.constant(M),
                              0.3, delta, component_objective='entropy')
  rme = _terms(loc, scale, eps_logit, noise, kl_weight=0.3, prior_floor=delta, seed=12)
  z = loc[None] + scale[None] * noise
  log_joint = (_toy_decoder(12)(z) + posterior.standard_normal_log_prob(z)).numpy()
  table = posterior.component_log_prob_table(z, loc, scale).numpy().astype(np.float64)
  log_q_own = np.stack([table[:, :, m, m] for m in range(M)], -1)
  for m in range(1, M):
    log_w = posterior.recursive_log_weights(eps_logit, tf.constant(m)).numpy()[:, :m]
    prev = np.log(np.exp(log_w[None] + table[:, :, :m, m]).sum(-1))
    floored = np.log((1 - delta) * np.exp(prev) + delta * np.exp(
        posterior.standard_normal_log_prob(z).numpy()[..., m]))
    expected = (log_joint[..., m] - log_q_own[..., m] / math.sqrt(m + 1) - floored).mean(0)
    np.testing.assert_allclose(relbo.component_objective.numpy()[:, m], expected, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(relbo.component_objective.numpy()[:, 0],
                             rme.component_elbo.numpy()[:, 0], rtol=1e-6)  # q_1: plain ELBO


def test_joint_mixture_bound_trains_every_component_and_has_the_same_value():
  loc, scale, eps_logit, noise = _inputs(13)
  loc, scale = tf.Variable(loc), tf.Variable(scale)
  with tf.GradientTape(persistent=True) as tape:
    joint = objective.rme_terms(_toy_decoder(13), loc, scale, eps_logit, noise, tf.constant(3),
                                0.0, 0.0, joint=True)
    stopped = _terms(loc, scale, eps_logit, noise, n=3, kl_weight=0.0, prior_floor=0.0, seed=13)
    j, s = tf.reduce_sum(joint.mixture_elbo), tf.reduce_sum(stopped.mixture_elbo)
  np.testing.assert_allclose(joint.mixture_elbo.numpy(), stopped.mixture_elbo.numpy(), rtol=1e-6)
  g_joint, g_stopped = tape.gradient(j, loc).numpy(), tape.gradient(s, loc).numpy()
  assert np.all(g_joint[:, 3:] == 0) and np.all(np.any(g_joint[:, :3] != 0, axis=-1))
  assert not np.allclose(g_joint, g_stopped)  # log Q's own gradient is included


def test_iwae_term_with_one_sample_is_the_component_elbo():
  loc, scale, eps_logit, _ = _inputs(14)
  one = _random([1, B, M, D], 15)
  terms = _terms(loc, scale, eps_logit, one, seed=14)
  np.testing.assert_allclose(terms.iwae.numpy(), terms.component_elbo.numpy(), rtol=1e-6)
  many = _random([S, B, M, D], 16)
  terms = _terms(loc, scale, eps_logit, many, seed=14)
  assert np.all(terms.iwae.numpy() >= terms.component_elbo.numpy() - 1e-4)
