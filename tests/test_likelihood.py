"""Importance-sampled log-likelihood: exactness, chunking, bounds."""
import math

import numpy as np
import tensorflow as tf

from rec_vae_tf import methods
from rec_vae_tf.evaluation import likelihood
from rec_vae_tf.models import networks
from rec_vae_tf.methods import objective
from tests.conftest import D, M

P = 6


def _images(n, seed):
  return np.random.default_rng(seed).integers(0, 2, size=[n, P]).astype(np.float32)


def _batches(x, batch):
  return tf.data.Dataset.from_tensor_slices(x).batch(batch)


def _prior_posterior_networks(num_components, logits):
  """Decoder ignores z (p(x|z) = p(x)); every q_m is the prior. IS is then exact."""
  encoder, decoder = networks.build_networks(num_components, (4,), D, 'amortized', seed=0,
                                             num_pixels=P)
  unit = math.log(math.expm1(1.0 - networks.MIN_SCALE))  # softplus(unit) + MIN_SCALE = 1
  for v in encoder.loc_head.weights + [encoder.scale_head.kernel] + decoder.hidden[0].weights:
    v.assign(tf.zeros_like(v))
  encoder.scale_head.bias.assign(tf.fill(encoder.scale_head.bias.shape, unit))
  decoder.out.kernel.assign(tf.zeros_like(decoder.out.kernel))
  decoder.out.bias.assign(logits)
  return encoder, decoder


def test_exact_when_the_proposal_is_the_posterior_for_any_k_chunk_and_batching():
  logits = tf.constant(np.random.default_rng(0).normal(size=P), tf.float32)
  x = _images(7, 1)
  exact = (x * logits.numpy() - np.log1p(np.exp(logits.numpy()))).sum(-1).astype(np.float64)
  encoder, decoder = _prior_posterior_networks(M, logits)
  for k, chunk, batch in [(1, 1, 7), (10, 3, 3), (64, 64, 4)]:
    result = likelihood.evaluate(methods.for_networks(encoder, decoder), _batches(x, batch), 3, num_samples=k,
                                 chunk=chunk, seed=2, xla=False)
    assert result['num_examples'] == 7
    assert result['num_importance_samples'] == k
    np.testing.assert_allclose(result['test_log_likelihood'], exact.mean(), rtol=1e-6)
    np.testing.assert_allclose(result['test_elbo'], exact.mean(), rtol=1e-6)
    np.testing.assert_allclose(sum(result['mixture_weights']), 1.0, rtol=1e-6)
    assert result['mixture_weights'][3:] == [0.0] * (M - 3)


def test_importance_sampling_is_above_the_elbo_and_deterministic():
  encoder, decoder = networks.build_networks(M, (8,), D, 'amortized', seed=3, num_pixels=P)
  data = _batches(_images(12, 4), 5)
  method = methods.for_networks(encoder, decoder)
  a = likelihood.evaluate(method, data, M, num_samples=200, chunk=64, seed=5, xla=False)
  b = likelihood.evaluate(method, data, M, num_samples=200, chunk=64, seed=5, xla=False)
  assert a['test_log_likelihood'] == b['test_log_likelihood']
  assert a['test_log_likelihood'] > a['test_elbo']
  assert a['encoder_ms_per_batch'] > 0


def test_importance_log_weights_one_sample_is_a_single_sample_elbo():
  encoder, decoder = networks.build_networks(1, (8,), D, 'fixed', seed=6, num_pixels=P)
  ev = likelihood.Evaluator(methods.for_networks(encoder, decoder, 'vae'), xla=False)
  x = tf.constant(_images(4, 7))
  one = ev.log_likelihood(x, tf.constant(1), num_samples=1, chunk=1, seed=8)
  many = np.stack([ev.log_likelihood(x, tf.constant(1), num_samples=1, chunk=1, seed=s)
                   for s in range(300)])
  enc = encoder(x)
  noise = tf.random.stateless_normal([2000, 4, 1, D], seed=[9, 9])
  elbo = objective.rme_terms(lambda z: decoder.log_prob(x, z), enc.loc, enc.scale, enc.eps_logit,
                             noise, tf.constant(1), 0.0, 0.0).mixture_elbo.numpy()
  assert one.dtype == np.float64 and one.shape == (4,)
  # K = 1: the log weight of one sample, whose mean over draws is the ELBO.
  np.testing.assert_allclose(many.mean(0), elbo, rtol=0.03)


def test_split_decoder_chunk_equals_the_compiled_chunk():
  encoder, decoder = networks.build_networks(M, (8,), D, 'amortized', seed=3, num_pixels=P)
  x = tf.constant(_images(5, 9))
  method = methods.for_networks(encoder, decoder)
  whole = likelihood.Evaluator(method, xla=True, split_decoder=False)
  split = likelihood.Evaluator(method, xla=True, split_decoder=True)
  assert split.split_decoder and not whole.split_decoder
  a = whole.log_likelihood(x, tf.constant(3), num_samples=20, chunk=8, seed=4)
  b = split.log_likelihood(x, tf.constant(3), num_samples=20, chunk=8, seed=4)
  np.testing.assert_allclose(a, b, rtol=1e-5)


def _savae(encoder, decoder, steps):
  return methods.for_networks(encoder, decoder, 'savae', refine_steps=steps,
                              refine_step_size=0.05)


def test_refined_posterior_zero_steps_is_the_encoder_and_steps_raise_the_elbo():
  encoder, decoder = networks.build_networks(1, (8,), D, 'amortized', seed=3, num_pixels=P)
  data = _batches(_images(12, 4), 5)
  kwargs = dict(num_samples=20, chunk=8, seed=5, xla=False)
  plain = likelihood.evaluate(methods.for_networks(encoder, decoder, 'vae'), data, 1, **kwargs)
  zero = likelihood.evaluate(_savae(encoder, decoder, 0), data, 1, **kwargs)
  for key in ('test_log_likelihood', 'test_elbo', 'component_elbo'):
    assert zero[key] == plain[key], key
  refined = likelihood.evaluate(_savae(encoder, decoder, 10), data, 1, **kwargs)
  print(f"ELBO {plain['test_elbo']:.3f} -> refined {refined['test_elbo']:.3f}")
  assert refined['test_elbo'] > plain['test_elbo'] + 0.05
  assert refined['encoder_ms_per_batch'] > 0
  # The refined posterior is the evaluator's posterior everywhere: encode and ELBO agree.
  ev = likelihood.Evaluator(_savae(encoder, decoder, 10), xla=False)
  x = next(iter(data))
  loc = ev._encode(x, tf.constant(1)).loc
  enc = encoder(x)
  assert not np.allclose(loc.numpy(), enc.loc.numpy())
