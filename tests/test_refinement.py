"""Per-example Gaussian refinement (SA-VAE / vae+svi): identity, ascent, gradients, tracing."""
import numpy as np
import pytest
import tensorflow as tf

from rec_vae_tf.models import networks
from rec_vae_tf.methods import refinement
from tests.conftest import B, D, S

P = 7


def _toy_bernoulli(seed=0):
  """A fixed linear Bernoulli decoder and binary data: z [S, B, D] -> log p(x|z) [S, B]."""
  rng = np.random.default_rng(seed)
  weights = tf.constant(rng.normal(size=[D, P]), tf.float32)
  bias = tf.constant(rng.normal(size=[P]), tf.float32)
  x = tf.constant(rng.integers(0, 2, size=[B, P]), tf.float32)
  return lambda z: networks.bernoulli_log_prob(x, tf.einsum('sbd,dp->sbp', z, weights) + bias)


def _start(seed=1):
  rng = np.random.default_rng(seed)
  return (tf.constant(rng.normal(size=[B, D]) * 0.3, tf.float32),
          tf.constant(rng.normal(size=[B, D]) * 0.1 - 0.5, tf.float32))


def test_zero_steps_returns_the_input_exactly():
  loc, log_scale = _start()
  for stop in (True, False):
    out = refinement.refine_gaussian(_toy_bernoulli(), loc, log_scale, num_steps=0, step_size=1.0,
                                     stop_encoder_gradient=stop)
    np.testing.assert_array_equal(out.loc.numpy(), loc.numpy())
    np.testing.assert_array_equal(out.scale.numpy(), tf.exp(log_scale).numpy())


def test_steps_increase_the_elbo_on_average():
  fn = _toy_bernoulli()
  loc, log_scale = _start()
  out = refinement.refine_gaussian(fn, loc, log_scale, num_steps=20, step_size=0.05, momentum=0.5,
                                   num_samples=S, seed=tf.constant([3, 4]))
  eval_noise = tf.random.stateless_normal([4000, B, D], seed=[5, 6])  # common random numbers

  def elbo(loc, scale):
    return refinement.gaussian_elbo(fn, loc, tf.math.log(scale), eval_noise).numpy()  # [B]

  before, after = elbo(loc, tf.exp(log_scale)), elbo(out.loc, out.scale)
  assert after.mean() > before.mean() + 0.1, (before, after)
  assert np.all(after > before - 0.05)  # no example gets materially worse


def test_eager_and_tf_function_agree_and_noise_equals_its_seed():
  fn = _toy_bernoulli()
  loc, log_scale = _start()
  seed = tf.constant([7, 8])
  kwargs = dict(num_steps=3, step_size=0.1, momentum=0.5, num_samples=S, max_grad_norm=5.0)
  eager = refinement.refine_gaussian(fn, loc, log_scale, seed=seed, **kwargs)
  traced = tf.function(lambda a, b, s: refinement.refine_gaussian(fn, a, b, seed=s, **kwargs))(
      loc, log_scale, seed)
  noise = tf.stack([tf.random.stateless_normal(
      [S, B, D], seed=tf.random.experimental.stateless_fold_in(seed, k)) for k in range(3)])
  given = refinement.refine_gaussian(fn, loc, log_scale, noise=noise, **kwargs)
  for out in (traced, given):
    np.testing.assert_allclose(out.loc.numpy(), eager.loc.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.scale.numpy(), eager.scale.numpy(), rtol=1e-5, atol=1e-6)
  assert not np.allclose(eager.loc.numpy(), loc.numpy())


def test_second_order_gradient_flows_to_the_encoder_output_only_when_asked():
  # Gaussian likelihood log p(x|z) = -|z - c|^2 / 2: the ELBO gradient w.r.t. loc is
  # c - scale * e - 2 loc, so one step maps loc to (1 - 2 lr) loc + const and
  # d sum(loc_1) / d loc_0 = 1 - 2 lr exactly (the second-order term is -2 lr).
  c = tf.constant(np.linspace(-1, 1, B * D).reshape(B, D), tf.float32)
  fn = lambda z: -0.5 * tf.reduce_sum(tf.square(z - c), -1)  # [S, B]
  loc, log_scale = _start()
  lr = 0.1
  for stop in (False, True):
    with tf.GradientTape() as tape:
      tape.watch([loc, log_scale])
      out = refinement.refine_gaussian(fn, loc, log_scale, num_steps=1, step_size=lr,
                                       seed=tf.constant([1, 2]), stop_encoder_gradient=stop)
      total = tf.reduce_sum(out.loc)
    grad = tape.gradient(total, loc)
    if stop:
      assert grad is None
    else:
      np.testing.assert_allclose(grad.numpy(), np.full([B, D], 1 - 2 * lr), rtol=1e-5)


def test_clipping_bounds_each_step():
  fn = _toy_bernoulli()
  loc, log_scale = _start()
  out = refinement.refine_gaussian(fn, loc, log_scale, num_steps=1, step_size=1.0,
                                   seed=tf.constant([1, 1]), max_grad_norm=0.01)
  moved = np.sqrt(np.sum((out.loc.numpy() - loc.numpy()) ** 2, -1) +
                  np.sum((np.log(out.scale.numpy()) - log_scale.numpy()) ** 2, -1))  # [B]
  assert np.all(moved <= 0.01 + 1e-6) and np.all(moved > 0.009)


def test_bad_arguments():
  loc, log_scale = _start()
  with pytest.raises(ValueError, match='num_steps'):
    refinement.refine_gaussian(_toy_bernoulli(), loc, log_scale, num_steps=-1, step_size=1.0)
  with pytest.raises(ValueError, match='exactly one of seed and noise'):
    refinement.refine_gaussian(_toy_bernoulli(), loc, log_scale, num_steps=1, step_size=1.0)
