"""Batched encoders and the Bernoulli decoder."""
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from rec_vae_tf.models import networks
from rec_vae_tf.models import posterior
from tests.conftest import B, D, M

P = 7


def _x(seed=0):
  return tf.constant(np.random.default_rng(seed).integers(0, 2, size=[B, P]), tf.float32)


def test_batched_dense_equals_separate_layers():
  layer = networks.BatchedDense(M, 6, activation='relu', seed=1)
  x = tf.random.stateless_normal([B, P], seed=[1, 2])
  y = layer(x).numpy()  # [B, M, 6]
  for m in range(M):
    expected = tf.nn.relu(x @ layer.kernel[m] + layer.bias[m]).numpy()
    np.testing.assert_allclose(y[:, m], expected, rtol=1e-5, atol=1e-6)
  h = tf.random.stateless_normal([B, M, 6], seed=[3, 4])
  layer2 = networks.BatchedDense(M, 2, seed=2)
  y2 = layer2(h).numpy()
  for m in range(M):
    np.testing.assert_allclose(y2[:, m], (h[:, m] @ layer2.kernel[m] + layer2.bias[m]).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_component_initialisation_is_independent_with_per_component_fans():
  layer = networks.BatchedDense(M, 50, seed=3)
  layer.build((None, 40))
  k = layer.kernel.numpy()
  limit = math.sqrt(6.0 / (40 + 50))
  assert np.abs(k).max() <= limit
  assert np.abs(k).max() > 0.9 * limit  # not shrunk by M
  for i in range(M):
    for j in range(i):
      assert not np.allclose(k[i], k[j])


@pytest.mark.parametrize('eps_mode', ['amortized', 'global', 'fixed'])
def test_encoder_shapes_and_initial_weights(eps_mode):
  encoder, decoder = networks.build_networks(M, (6,), D, eps_mode, seed=0, num_pixels=P)
  out = encoder(_x())
  assert out.loc.shape == (B, M, D)
  assert out.scale.shape == (B, M, D)
  assert out.eps_logit.shape == (B, M)
  assert np.all(out.scale.numpy() > 0)
  eps = 1 / (1 + np.exp(-out.eps_logit.numpy()))
  m = np.arange(1, M + 1)
  if eps_mode == 'fixed':
    np.testing.assert_allclose(eps[:, 1:], np.broadcast_to(2 / (m[1:] + 1), (B, M - 1)), rtol=1e-5)
  else:
    np.testing.assert_allclose(eps[:, 1:], np.broadcast_to(1 / m[1:], (B, M - 1)), rtol=1e-5)
    alpha = np.exp(posterior.recursive_log_weights(out.eps_logit, tf.constant(M)).numpy())
    np.testing.assert_allclose(alpha, np.full((B, M), 1 / M), rtol=1e-5)  # uniform start
  assert decoder(out.loc).shape == (B, M, P)


def test_variable_groups_partition_the_encoder():
  encoder, _ = networks.build_networks(M, (6,), D, 'amortized', seed=0, num_pixels=P)
  comp = {id(v) for v in encoder.component_variables}
  weights = {id(v) for v in encoder.weight_variables}
  assert comp and weights and not comp & weights
  assert comp | weights == {id(v) for v in encoder.trainable_variables}
  for v in encoder.component_variables + encoder.weight_variables:
    assert v.shape[0] == M  # one slice per component
  fixed, _ = networks.build_networks(M, (6,), D, 'fixed', seed=0, num_pixels=P)
  assert fixed.weight_variables == []


def test_bernoulli_log_prob_matches_tfp():
  _, decoder = networks.build_networks(1, (6,), D, 'fixed', seed=0, num_pixels=P)
  z = tf.random.stateless_normal([2, B, M, D], seed=[5, 6])
  x = _x(1)
  ours = decoder.log_prob(x, z).numpy()  # [2, B, M]
  logits = decoder(z)
  expected = tfp.distributions.Independent(
      tfp.distributions.Bernoulli(logits=logits), 1).log_prob(x[:, None, :]).numpy()
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)
  assert np.all(ours <= 0)


def test_parameter_count():
  encoder, decoder = networks.build_networks(M, (6,), D, 'amortized', seed=0, num_pixels=P)
  per_encoder = (P * 6 + 6) + 2 * (6 * D + D) + (6 + 1)
  assert networks.count_parameters(encoder) == M * per_encoder
  assert networks.count_parameters(decoder) == (D * 6 + 6) + (6 * P + P)


def test_checkpoint_holds_every_variable(tmp_path):
  """Layers kept in Python lists must still reach tf.train.Checkpoint."""
  encoder, decoder = networks.build_networks(M, (6, 5), D, 'amortized', seed=0, num_pixels=P)
  path = tf.train.Checkpoint(encoder=encoder, decoder=decoder).save(str(tmp_path / 'ck'))
  saved = [n for n, _ in tf.train.list_variables(path) if n.endswith('VARIABLE_VALUE')
           and not n.startswith('save_counter')]
  assert len(saved) == len(encoder.variables) + len(decoder.variables)
  before = [v.numpy().copy() for v in encoder.variables + decoder.variables]
  for v in encoder.variables + decoder.variables:
    v.assign(tf.zeros_like(v) + 7.0)
  tf.train.Checkpoint(encoder=encoder, decoder=decoder).restore(path).assert_consumed()
  for v, b in zip(encoder.variables + decoder.variables, before):
    np.testing.assert_array_equal(v.numpy(), b)


def test_mixed_precision_computes_in_bfloat16_with_float32_variables_and_outputs():
  x = _x()
  full = networks.build_networks(M, (6,), D, 'amortized', seed=0, num_pixels=P)
  mixed = networks.build_networks(M, (6,), D, 'amortized', seed=0, num_pixels=P,
                                  mixed_precision=True)
  for a, b in zip(full, mixed):
    assert [(v.path, v.shape, v.dtype) for v in a.variables] == [
        (v.path, v.shape, v.dtype) for v in b.variables]  # same checkpoints
    for va, vb in zip(a.variables, b.variables):
      np.testing.assert_array_equal(va.numpy(), vb.numpy())
  assert mixed[0].trunk[0].compute_dtype == 'bfloat16'
  assert mixed[1].out.compute_dtype == 'bfloat16'
  out_full, out_mixed = full[0](x), mixed[0](x)
  for name in ('loc', 'scale', 'eps_logit'):
    value = getattr(out_mixed, name)
    assert value.dtype == tf.float32
    np.testing.assert_allclose(value.numpy(), getattr(out_full, name).numpy(), rtol=0.05, atol=0.05)
  z = tf.random.stateless_normal([2, B, M, D], seed=[1, 2])
  log_p = mixed[1].log_prob(x, z)
  assert log_p.dtype == tf.float32
  np.testing.assert_allclose(log_p.numpy(), full[1].log_prob(x, z).numpy(), rtol=0.02)
