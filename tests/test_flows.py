"""Flow posteriors (iaf, hf): identity start, exact log-determinants, training routes, evaluation."""
import numpy as np
import pytest
import tensorflow as tf

from rec_vae_tf import config as config_lib
from rec_vae_tf import methods
from rec_vae_tf.data import sources as data_sources
from rec_vae_tf.models import flows
from rec_vae_tf.evaluation import likelihood
from rec_vae_tf.models import networks
from rec_vae_tf.methods import objective
from rec_vae_tf.training import trainer as trainer_lib
from rec_vae_tf.training import loop as loop_lib
from tests.conftest import B, D, S

H = 6  # context features
P = 12


def _randomize(layer, seed=0):
  """Non-trivial parameters (the output layers start at zero)."""
  rng = np.random.default_rng(seed)
  for v in layer.trainable_variables:
    v.assign(0.5 * rng.standard_normal(v.shape).astype(np.float32))


def _log_abs_det_jacobian(flow, z, context):
  """log|det dz_T/dz_0| by automatic differentiation: [N] for z [N, D]."""
  with tf.GradientTape() as tape:
    tape.watch(z)
    z_t, _ = flow(z, context)
  jacobian = tape.batch_jacobian(z_t, z)  # [N, D, D]
  return tf.linalg.slogdet(jacobian)[1]


@pytest.mark.parametrize('method', flows.FLOW_METHODS)
def test_untrained_iaf_is_the_identity_and_householder_preserves_volume(method):
  flow = flows.build_flow(method, 3, D, H, hidden_units=7, seed=0)
  z = tf.random.stateless_normal([S, B, D], seed=[1, 2])
  context = tf.random.stateless_normal([B, H], seed=[3, 4])
  z_t, log_det = flow(z, context)
  assert z_t.shape == (S, B, D) and log_det.shape == (S, B)
  np.testing.assert_array_equal(log_det.numpy(), 0.0)
  if method == 'iaf':  # zero output layer: shift 0, log scale 0
    np.testing.assert_array_equal(z_t.numpy(), z.numpy())
  else:  # reflections move points but keep lengths
    assert np.abs(z_t.numpy() - z.numpy()).max() > 0.1
    np.testing.assert_allclose(np.linalg.norm(z_t, axis=-1), np.linalg.norm(z, axis=-1), rtol=1e-5)


def test_identity_flow_leaves_the_gaussian_posterior_unchanged():
  """With identity flow parameters the flow ELBO is the VAE's ELBO, term by term."""
  flow = flows.build_flow('iaf', 2, D, H, hidden_units=7, seed=0)
  rng = np.random.default_rng(0)
  loc = tf.constant(rng.standard_normal([B, 1, D]), tf.float32)
  scale = tf.constant(rng.uniform(0.5, 1.5, [B, 1, D]), tf.float32)
  features = tf.constant(rng.standard_normal([B, 1, H]), tf.float32)
  noise = tf.constant(rng.standard_normal([S, B, 1, D]), tf.float32)
  log_p = lambda z: -tf.reduce_sum(tf.square(z - 0.3), -1)  # any likelihood
  with_flow = objective.flow_terms(log_p, loc, scale, features, flow, noise)
  gaussian = objective.rme_terms(log_p, loc, scale, tf.zeros([B, 1]), noise, tf.constant(1),
                                 kl_weight=0.0, prior_floor=0.0)
  for a, b in zip(with_flow, gaussian):
    if a is None and b is None:  # optional terms (mixture_iw, iwae_dreg) neither computes
      continue
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('method', flows.FLOW_METHODS)
def test_log_det_matches_the_autodiff_jacobian(method):
  flow = flows.build_flow(method, 3, D, H, hidden_units=7, seed=1)
  _randomize(flow)
  z = tf.random.stateless_normal([B, D], seed=[5, 6])
  context = tf.random.stateless_normal([B, H], seed=[7, 8])
  _, log_det = flow(z, context)
  exact = _log_abs_det_jacobian(flow, z, context)
  np.testing.assert_allclose(log_det.numpy(), exact.numpy(), atol=1e-4)
  if method == 'hf':  # volume preserving
    np.testing.assert_allclose(exact.numpy(), 0.0, atol=1e-5)
  else:
    assert np.abs(log_det.numpy()).max() > 0.1  # the check is not trivially zero


def test_iaf_step_is_autoregressive():
  """Output d of one IAF step depends only on the variables before d in its order."""
  flow = flows.build_flow('iaf', 1, D, H, hidden_units=7, seed=2)
  _randomize(flow, seed=3)
  z = tf.random.stateless_normal([1, D], seed=[1, 1])
  with tf.GradientTape() as tape:
    tape.watch(z)
    z_t, _ = flow(z, tf.ones([1, H]))
  jacobian = tape.batch_jacobian(z_t, z)[0].numpy()  # [D out, D in]
  np.testing.assert_allclose(np.triu(jacobian, 1), 0.0, atol=1e-7)  # lower triangular
  assert np.abs(np.tril(jacobian, -1)).max() > 1e-3


def _cfg(method, **kw):
  return config_lib.Config(method=method, num_components=1, latent_dim=D, epochs=2,
                           batch_size=4, eval_batch_size=4, learning_rate=1e-2, xla=False,
                           seed=1, flow_steps=2, flow_hidden_units=7, **kw).validate()


def _tiny_networks(num_components, hidden_units, latent_dim, eps_mode, seed, num_pixels,
                   encoder_hidden_units=None):
  del hidden_units
  return networks.build_networks(num_components, (8,), latent_dim, eps_mode, seed, num_pixels,
                                 encoder_hidden_units=encoder_hidden_units)


def _load_data(data_dir, train_examples=None):
  del data_dir, train_examples
  images = (np.random.default_rng(0).random([20, P]) * 255).astype(np.uint8)
  return data_sources.Splits(train=images[:8], valid=images[8:12], test=images[12:])


@pytest.mark.parametrize('method', flows.FLOW_METHODS)
def test_flow_step_trains_encoder_flow_and_decoder_on_the_flow_elbo(method, tmp_path):
  cfg = _cfg(method)
  tr = trainer_lib.Trainer(cfg, str(tmp_path), make_networks=_tiny_networks, num_pixels=P)
  _randomize(tr.method.flow)
  import keras  # pylint: disable=g-import-not-at-top
  lr = 1e-2
  tr.optimizer = keras.optimizers.SGD(lr)  # each update is exactly -lr * gradient
  tr.optimizer.build(tr.all_vars)
  x = tf.constant(np.random.default_rng(2).integers(0, 2, [4, P]), tf.float32)
  noise = tr._noise(x)
  with tf.GradientTape() as tape:
    enc = tr.encoder(x)
    terms = objective.flow_terms(lambda z: tr.decoder.log_prob(x, z), enc.loc, enc.scale,
                                 enc.features, tr.method.flow, noise['z'])
    loss = -tf.reduce_mean(terms.mixture_elbo)
  grads = tape.gradient(loss, tr.all_vars)
  before = [v.numpy().copy() for v in tr.all_vars]
  tf.function(tr._step)(x, tf.constant(1), tf.constant(0), noise=noise)
  flow_ids = {id(v) for v in tr.method.flow.trainable_variables}
  moved_flow = False
  for var, old, g in zip(tr.all_vars, before, grads):
    g = np.zeros(var.shape) if g is None else g.numpy()
    np.testing.assert_allclose((old - var.numpy()) / lr, g, rtol=2e-3, atol=2e-4, err_msg=var.path)
    moved_flow |= id(var) in flow_ids and np.abs(g).max() > 0
  assert moved_flow
  # The eps head has no role with one component: untouched.
  for var in tr.encoder.weight_variables:
    np.testing.assert_array_equal(var.numpy(), before[[id(v) for v in tr.all_vars].index(id(var))])


@pytest.mark.parametrize('method', flows.FLOW_METHODS)
def test_flow_run_trains_checkpoints_and_evaluates_with_its_flow(method, tmp_path):
  cfg = _cfg(method)
  result = loop_lib.train(cfg, str(tmp_path), load_data=_load_data,
                          make_networks=_tiny_networks, log=lambda s: None)
  tr = result.trainer
  flow_values = [v.numpy() for v in tr.method.flow.variables]
  assert any(np.abs(v).max() > 0 for v in flow_values)
  # The selected checkpoint holds the flow: a fresh restore gets the same values.
  _, restored, _ = trainer_lib.restore_for_evaluation(str(tmp_path), make_networks=_tiny_networks,
                                                      num_pixels=P)
  for a, b in zip(flow_values, restored.method.flow.variables):
    np.testing.assert_array_equal(a, b.numpy())
  x = tf.constant(result.splits.test.astype(np.float32) / 255.0 > 0.5, tf.float32)
  with_flow = likelihood.Evaluator(tr.method, xla=False)
  without = likelihood.Evaluator(methods.for_networks(tr.encoder, tr.decoder, 'vae'), xla=False)
  ll_flow = with_flow.log_likelihood(x, tf.constant(1), 64, 32, seed=0)
  ll_plain = without.log_likelihood(x, tf.constant(1), 64, 32, seed=0)
  assert np.all(np.isfinite(ll_flow)) and np.abs(ll_flow - ll_plain).max() > 1e-4
  # One importance sample is a one-sample flow ELBO: log w = log p(x, z_T) - log q_T(z_T).
  post = with_flow._encode(x, tf.constant(1))
  component, eps = likelihood.draw_proposal_noise(post.log_alpha, 1, D, tf.constant([0, 0]))
  log_w = likelihood.importance_log_weights_from_noise(
      tr.decoder, x, post.log_alpha, post.loc, post.scale, component, eps, tr.method.transform,
      post.context)
  terms = objective.flow_terms(lambda z: tr.decoder.log_prob(x, z), post.loc, post.scale,
                               tr.encoder(x).features, tr.method.flow, eps[:, :, None, :])
  np.testing.assert_allclose(log_w.numpy()[0], terms.mixture_elbo.numpy(), rtol=1e-5, atol=1e-4)
  assert with_flow._infer(x, tf.constant(1))[1].shape == (x.shape[0], D)


def test_capacity_matched_encoder_is_wider_and_the_decoder_is_not(tmp_path):
  cfg = _cfg('vae').replace(method='vae', encoder_hidden_units=16)
  tr = trainer_lib.Trainer(cfg, str(tmp_path), make_networks=_tiny_networks, num_pixels=P)
  assert tr.encoder.trunk[0].units == 16
  assert [l.units for l in tr.decoder.hidden] == [8]
  assert tr.method.modules == {}
