"""Conv encoders (M components in one grouped computation) and conv decoders."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from rec_vae_tf import config as config_lib
from rec_vae_tf.models import conv_networks
from rec_vae_tf.models import likelihoods
from rec_vae_tf.models import networks
from rec_vae_tf.models import posterior
from rec_vae_tf.training import trainer as trainer_lib
from tests.conftest import B, D, M, S

IMAGE = (8, 12, 3)  # H != W: an H/W mix-up fails
P = 8 * 12 * 3
CHANNELS = (6, 7)  # two stride-2 layers: 8x12 -> 4x6 -> 2x3


def _images(seed=0, x_max=255.0):
  pixels = np.random.default_rng(seed).integers(0, 256, size=[B, P])
  return tf.constant(pixels * (x_max / 255), tf.float32)


def _build(eps_mode='amortized', likelihood='logistic', num_components=M, **kw):
  return conv_networks.build_conv_networks(num_components, 'conv_small', D, eps_mode, 0, IMAGE,
                                           likelihood, channels=CHANNELS, **kw)


def test_channels_per_size():
  assert conv_networks.conv_channels('conv_small', (28, 28, 1)) == (32, 64)
  assert conv_networks.conv_channels('conv_large', (28, 28, 1)) == (64, 128)
  assert conv_networks.conv_channels('conv_small', (32, 32, 3)) == (32, 64, 128)
  assert conv_networks.conv_channels('conv_large', (64, 64, 3)) == (64, 128, 256, 512)
  with pytest.raises(ValueError, match='conv_huge'):
    conv_networks.conv_channels('conv_huge', (28, 28, 1))
  with pytest.raises(ValueError, match='image_shape'):
    conv_networks.conv_channels('conv_small', (7, 7, 1))


@pytest.mark.parametrize('eps_mode', ['amortized', 'global', 'fixed'])
def test_encoder_outputs_and_initial_weights_match_the_dense_encoder(eps_mode):
  encoder, decoder = _build(eps_mode)
  out = encoder(_images())
  assert out.loc.shape == (B, M, D) and out.scale.shape == (B, M, D)
  assert out.eps_logit.shape == (B, M)
  assert np.all(out.scale.numpy() > 0)
  assert encoder.num_components == M and encoder.latent_dim == D
  dense, _ = networks.build_networks(M, (6,), D, eps_mode, seed=0, num_pixels=P)
  np.testing.assert_allclose(out.eps_logit.numpy(), dense(_images()).eps_logit.numpy(), rtol=1e-6)
  if eps_mode != 'fixed':
    alpha = np.exp(posterior.recursive_log_weights(out.eps_logit, tf.constant(M)).numpy())
    np.testing.assert_allclose(alpha, np.full((B, M), 1 / M), rtol=1e-5)  # uniform start
  assert decoder(out.loc).shape == (B, M, P * 2)


def _conv_alone(x, layer, m):
  """Component m of a GroupedConv2D with its own weights and an ordinary convolution."""
  y = tf.nn.conv2d(x, layer.kernel[m], 2, 'SAME') + layer.bias[m]
  return tf.nn.relu(y)


@pytest.mark.parametrize('eps_mode', ['amortized', 'global'])
def test_batched_encoder_equals_m_separate_encoders(eps_mode):
  encoder, _ = _build(eps_mode)
  x = _images()
  out = encoder(x)
  features = encoder.features(x).numpy()  # [B, M, hwF]
  image = tf.reshape(x, (B,) + IMAGE) * (2 / 255) - 1
  for m in range(M):
    h = _conv_alone(image, encoder.convs[0], m)  # [B, 4, 6, F0]
    # Later layers read only component m's channels of the batched output.
    h = _conv_alone(h, encoder.convs[1], m)  # [B, 2, 3, F1]
    h = tf.reshape(h, [B, -1])  # [B, hwF], row-major (h, w, F)
    np.testing.assert_allclose(features[:, m], h.numpy(), rtol=1e-5, atol=1e-6)
    loc = h @ encoder.loc_head.kernel[m] + encoder.loc_head.bias[m]
    scale = tf.nn.softplus(h @ encoder.scale_head.kernel[m] + encoder.scale_head.bias[m])
    np.testing.assert_allclose(out.loc[:, m].numpy(), loc.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.scale[:, m].numpy(), scale.numpy() + networks.MIN_SCALE,
                               rtol=1e-5, atol=1e-5)
    if eps_mode == 'amortized':
      eps = h @ encoder.eps_head.kernel[m] + encoder.eps_head.bias[m]
      np.testing.assert_allclose(out.eps_logit[:, m].numpy(), eps.numpy()[:, 0], rtol=1e-5)


def test_variable_groups_partition_the_encoder_with_leading_component_axis():
  encoder, _ = _build('amortized')
  comp = {id(v) for v in encoder.component_variables}
  weights = {id(v) for v in encoder.weight_variables}
  assert comp and weights and not comp & weights
  assert comp | weights == {id(v) for v in encoder.trainable_variables}
  for v in encoder.component_variables + encoder.weight_variables:
    assert v.shape[0] == M  # one slice per component: freeze_earlier and warm_start slice it
  fixed, _ = _build('fixed')
  assert fixed.weight_variables == []


def test_gradients_stay_within_their_component_and_group():
  encoder, _ = _build('amortized')
  x = _images()
  j = 2
  with tf.GradientTape(persistent=True) as tape:
    out = encoder(x)
    component_loss = tf.reduce_sum(out.loc[:, j] ** 2) + tf.reduce_sum(out.scale[:, j])
    weight_loss = tf.reduce_sum(tf.sigmoid(out.eps_logit) * np.arange(1, M + 1))
  grads = tape.gradient(component_loss, encoder.component_variables)
  for v, g in zip(encoder.component_variables, grads):
    g = g.numpy()
    assert np.abs(g[j]).max() > 0, v.path
    assert np.all(np.delete(g, j, axis=0) == 0), v.path  # no leak across grouped convs
  assert all(g is None for g in tape.gradient(component_loss, encoder.weight_variables))
  # The eps head reads stopped features: a weight loss never reaches the trunk.
  assert all(g is None for g in tape.gradient(weight_loss, encoder.component_variables))
  for g in tape.gradient(weight_loss, encoder.weight_variables):
    assert np.abs(g.numpy()).max() > 0


def _cfg(**kw):
  base = dict(num_components=M, latent_dim=D, batch_size=B, eval_batch_size=B,
              learning_rate=1e-2, xla=False, seed=1)
  base.update(kw)
  return config_lib.Config(**base).validate()


def test_a_trainer_step_moves_only_the_trainable_slices(tmp_path):
  """freeze_earlier with 2 active: component 1 and the decoder move; 0, 2, 3 stay."""
  make = conv_networks.make_conv_networks('conv_small', IMAGE, 'logistic', channels=CHANNELS)
  tr = trainer_lib.Trainer(_cfg(schedule='freeze_earlier'), str(tmp_path), make_networks=make,
                           num_pixels=P)
  assert isinstance(tr.encoder, conv_networks.ConvMixtureEncoder)
  before = [v.numpy().copy() for v in tr.all_vars]
  x = _images()
  metrics = tr._compiled_step(x, tf.constant(2), tf.constant(1), noise=tr._noise(x))
  assert np.isfinite(metrics['mixture_elbo'].numpy())
  for v, old in zip(tr.all_vars, before):
    new = v.numpy()
    if any(v is w for w in tr.decoder.trainable_variables):
      assert not np.array_equal(new, old), v.path
      continue
    np.testing.assert_array_equal(new[[0, 2, 3]], old[[0, 2, 3]], err_msg=v.path)
    assert not np.array_equal(new[1], old[1]), v.path


def test_checkpoint_round_trip_restores_every_variable(tmp_path):
  encoder, decoder = _build('global', likelihood='logistic_mixture', num_mixtures=2)
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


@pytest.mark.parametrize('likelihood', ['bernoulli', 'logistic_mixture'])
def test_decoder_leading_axes_and_log_prob(likelihood):
  encoder, decoder = _build(likelihood=likelihood, num_mixtures=2)
  n = decoder.likelihood.params_per_dim
  x = _images(1, x_max=1.0) if likelihood == 'bernoulli' else _images(1)
  if likelihood == 'bernoulli':
    x = tf.round(x)
  z = tf.random.stateless_normal([S, B, M, D], seed=[1, 2])
  params = decoder(z)
  assert params.shape == (S, B, M, P * n)
  flat = decoder(tf.reshape(z, [-1, D]))  # the same rows as one batch
  np.testing.assert_allclose(params.numpy().reshape(-1, P * n), flat.numpy(), rtol=1e-5,
                             atol=1e-6)
  log_p = decoder.log_prob(x, z)
  assert log_p.shape == (S, B, M) and log_p.dtype == tf.float32
  assert np.all(log_p.numpy() <= 0)
  for b in range(B):
    expected = decoder.likelihood.log_prob_of_params(x[b], params[:, b])  # [S, M]
    np.testing.assert_allclose(log_p[:, b].numpy(), expected.numpy(), rtol=1e-5)
  if likelihood == 'bernoulli':
    expected = tfp.distributions.Independent(
        tfp.distributions.Bernoulli(logits=params), 1).log_prob(x[:, None, :])
    np.testing.assert_allclose(log_p.numpy(), expected.numpy(), rtol=1e-5, atol=1e-3)
  assert decoder.mean(z[0]).shape == (B, M, P)
  # The evaluator's split path: rows [K * B, D] reshaped to [K, B, -1].
  rows = tf.reshape(decoder(tf.reshape(z[:, :, 0], [-1, D])), [S, B, -1])
  np.testing.assert_allclose(decoder.log_prob_of_logits(x, rows).numpy(), log_p[:, :, 0].numpy(),
                             rtol=1e-5)


def test_xla_equals_eager():
  encoder, decoder = _build('amortized')
  x = _images()
  noise = tf.random.stateless_normal([S, B, M, D], seed=[3, 4])

  def forward(x, noise):
    with tf.GradientTape() as tape:
      out = encoder(x)
      z = out.loc + out.scale * noise  # [S, B, M, D]
      log_p = decoder.log_prob(x, z)  # [S, B, M]
      loss = -tf.reduce_mean(log_p)
    return out, log_p, tape.gradient(loss, encoder.component_variables + decoder.trainable_variables)

  eager = forward(x, noise)
  xla = tf.function(forward, jit_compile=True)(x, noise)
  for a, b in zip(tf.nest.flatten(eager), tf.nest.flatten(xla)):
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-4)


def test_factory_fits_the_trainer_call():
  make = conv_networks.make_conv_networks('conv_small', IMAGE, 'logistic', channels=CHANNELS)
  encoder, decoder = make(M, (300, 300), D, 'fixed', 0, num_pixels=P)
  assert encoder(_images()).loc.shape == (B, M, D)
  with pytest.raises(ValueError, match='num_pixels'):
    make(M, (300,), D, 'fixed', 0, num_pixels=P + 1)
  with pytest.raises(ValueError, match='encoder_channels'):
    make(M, (300,), D, 'fixed', 0, num_pixels=P, encoder_hidden_units=(900,))
  mixed_enc, mixed_dec = make(M, (300,), D, 'fixed', 0, num_pixels=P, mixed_precision=True)
  assert mixed_enc.convs[1].compute_dtype == 'bfloat16'
  assert mixed_enc(_images()).loc.dtype == tf.float32
  assert mixed_dec.log_prob(_images(), tf.zeros([B, M, D])).dtype == tf.float32
  wide, _ = conv_networks.build_conv_networks(1, 'conv_small', D, 'fixed', 0, IMAGE, 'logistic',
                                              channels=CHANNELS, encoder_channels=(12, 14))
  assert wide.convs[1].kernel.shape == (1, 4, 4, 12, 14)


def test_parameter_counts_of_the_docstring_table():
  expected = {  # (image, size, likelihood): (encoder per component, decoder), D = 50
      ((28, 28, 1), 'conv_small', 'bernoulli'): (350213, 193249),
      ((28, 28, 1), 'conv_large', 'bernoulli'): (765861, 452033),
      ((32, 32, 3), 'conv_small', 'logistic'): (372549, 271462),
      ((32, 32, 3), 'conv_large', 'logistic'): (1072677, 870598),
      ((64, 64, 3), 'conv_small', 'logistic'): (1103941, 900326),
      ((64, 64, 3), 'conv_large', 'logistic'): (3584037, 3176902),
  }
  for (image, size, likelihood), counts in expected.items():
    encoder, decoder = conv_networks.build_conv_networks(1, size, 50, 'amortized', 0, image,
                                                         likelihood)
    assert (networks.count_parameters(encoder), networks.count_parameters(decoder)) == counts
  # The tiny networks by hand: conv k*k*in*F + F per component, heads on 2*3*7 features.
  encoder, decoder = _build('amortized')
  feats = 2 * 3 * CHANNELS[1]
  per_component = (16 * 3 * 6 + 6) + (16 * 6 * 7 + 7) + 2 * (feats * D + D) + (feats + 1)
  assert networks.count_parameters(encoder) == M * per_component
  assert networks.count_parameters(decoder) == (D * feats + feats) + (16 * 7 * 6 + 6) + (
      16 * 6 * 3 * 2 + 3 * 2)
  assert isinstance(decoder.likelihood, likelihoods.DiscretizedLogistic)
