"""Test-time evaluation (RME.md, "Test time" and "Evaluation").

Importance-sampled log-likelihood with the amortized mixture as proposal:

  log p(x) ~= logsumexp_k [log p(x|z_k) + log p(z_k) - log Q(z_k|x)] - log K,
  z_k ~ Q(.|x)  (component drawn from alpha(x), then z from it).

K samples are drawn in chunks of `chunk` so memory stays bounded; the per-chunk
logsumexps are combined and summed over examples in float64, and the total is
divided by the exact number of examples (never an average of batch means).

Also: the stratified ELBO of Q, per-component ELBOs, the mixture weights'
average and entropy, and the encoder's time per batch (one feed-forward pass:
the method's speed claim).

Under a tf.distribute strategy (`strategy=`, rec_vae_tf/training/distribute.py) every
batch is sharded across the replicas: each replica takes a block of the
batch's rows (padded to equal blocks, padding masked out), and returns float64
sums over its real rows and their count; the strategy sums those across
replicas and workers, and the totals are divided by the total count, exactly
as without a strategy. The random draws are those of the unsharded
evaluation (drawn for the whole batch, each replica keeping its rows), and
for log p(x) each replica encodes the whole batch (one cheap pass: the
component draws need the mixture weights of every row) and runs the K
decoder passes, nearly all of the cost, on its own rows only. So the
estimate equals the single-device one up to float rounding.

Semi-amortized baselines (savae, vae_svi) pass `refine`: their posterior is
the encoder's output refined per example by gradient steps on the ELBO
(`trainer.make_refine_fn`), at test time too. Every function here then uses
the refined posterior: the importance-sampling proposal, the ELBO and the
timed encoder pass (which therefore includes the refinement steps).
"""

import functools
import math
import time
from typing import Dict, NamedTuple

import numpy as np
import tensorflow as tf

from rec_vae_tf.training import distribute
from rec_vae_tf.models import likelihoods
from rec_vae_tf.methods import objective
from rec_vae_tf.models import posterior


class Posterior(NamedTuple):
  """The test-time posterior of a batch: one feed-forward pass (plus refinement)."""
  log_alpha: tf.Tensor  # [B, M] mixture log weights
  loc: tf.Tensor        # [B, M, D]
  scale: tf.Tensor      # [B, M, D]
  context: tf.Tensor = None  # [B, H] the flow's context (iaf, hf); None otherwise


def _posterior(encoder, x, refine=None):
  """The encoder's output, refined per example when `refine` is given.

  Args:
    encoder: a MixtureEncoder.
    x: [B, P] images.
    refine: None, or (x, loc [B, M, D], scale [B, M, D]) -> (loc, scale).
  Returns:
    (eps_logit [B, M], loc [B, M, D], scale [B, M, D], features [B, M, H] or None).
  """
  enc = encoder(x)
  loc, scale = enc.loc, enc.scale  # [B, M, D]
  if refine is not None:
    loc, scale = refine(x, loc, scale)  # [B, M, D]
  return enc.eps_logit, loc, scale, enc.features


def _encode(encoder, x, num_active, refine=None, flow=None) -> Posterior:
  eps_logit, loc, scale, features = _posterior(encoder, x, refine)
  log_alpha = posterior.recursive_log_weights(eps_logit, num_active)  # [B, M]
  if flow is None:
    return Posterior(log_alpha, loc, scale)
  return Posterior(log_alpha, loc, scale, features[:, 0])  # one component: context [B, H]


def _infer(encoder, x, num_active, refine=None, flow=None):
  """What a method computes per test batch before any sampling: the timed pass.

  The posterior's parameters (all of them are returned, so no part of the
  pass, e.g. savae's refinement steps, can be pruned away); flows also push
  the mean through the flow (the cost of one flow sample per example).
  """
  post = _encode(encoder, x, num_active, refine, flow)
  if flow is None:
    return post.log_alpha, post.loc, post.scale
  z, _ = flow(post.loc[:, 0], post.context)  # [B, D]
  return post.log_alpha, z


def draw_proposal_noise(log_alpha, num_samples, latent_dim, seed):
  """The random draws behind K samples z_k ~ Q(.|x): components and standard normals.

  Drawn with TensorFlow's own kernels, outside any XLA cluster: XLA's CPU
  Philox generator, fused into the evaluation, took 78% of its time (README,
  "Performance"). One normal vector per sample (not one per component).

  Args:
    log_alpha: [B, M] mixture log weights.
    num_samples: K (a Python int).
    latent_dim: D.
    seed: stateless seed, shape [2].
  Returns:
    (component [B, K] int32, drawn from alpha(x), in the layout the sampler
    returns it (a transpose here cost 3% of an evaluation); eps [K, B, D] float32).
  """
  component_seed = tf.random.experimental.stateless_fold_in(seed, 0)
  normal_seed = tf.random.experimental.stateless_fold_in(seed, 1)
  component = tf.random.stateless_categorical(
      log_alpha, num_samples, seed=component_seed, dtype=tf.int32)  # [B, K]
  eps = tf.random.stateless_normal(
      [num_samples, tf.shape(log_alpha)[0], latent_dim], seed=normal_seed)  # [K, B, D]
  return component, eps


def importance_log_weights_from_noise(decoder, x, log_alpha, loc, scale, component, eps,
                                      flow=None, context=None):
  """log p(x, z_k) - log Q(z_k|x) at z_k = loc[c_k] + scale[c_k] * eps_k: returns [K, B].

  Args:
    decoder: has log_prob(x [B, P], z [..., B, M, D]) -> [..., B, M].
    x: [B, P]; log_alpha: [B, M]; loc, scale: [B, M, D].
    component: [B, K] int32 component of each sample; eps: [K, B, D]
      (from `draw_proposal_noise`).
    flow, context: iaf / hf: the flow (z [K, B, D], context [B, H]) ->
      (z_T, log|det| [K, B]) applied to every sample, and its context.
  """
  z, log_p_z_over_q = proposal_samples(log_alpha, loc, scale, component, eps,
                                       flow, context)  # [K, B, D], [K, B]
  # decoder.log_prob wants a component axis: treat the K samples as [K, B, 1, D].
  log_p_x_given_z = decoder.log_prob(x, z[:, :, None, :])[..., 0]  # [K, B]
  return log_p_x_given_z + log_p_z_over_q


def proposal_samples(log_alpha, loc, scale, component, eps, flow=None, context=None):
  """z_k = loc[c_k] + scale[c_k] * eps_k and log p(z_k) - log Q(z_k|x).

  With a flow (iaf, hf; M = 1), z_k is pushed through it and
  log Q(z_T) = log q_0(z_0) - log|det|.

  Args:
    log_alpha: [B, M]; loc, scale: [B, M, D]; component: [B, K] int32; eps: [K, B, D].
    flow, context: None, or the flow and its context [B, H].
  Returns:
    (z [K, B, D], log_p_z_over_q [K, B]).
  """
  loc_k = tf.transpose(tf.gather(loc, component, batch_dims=1), [1, 0, 2])  # [K, B, D]
  scale_k = tf.transpose(tf.gather(scale, component, batch_dims=1), [1, 0, 2])  # [K, B, D]
  z = loc_k + scale_k * eps  # [K, B, D]
  log_q_components = posterior.diag_normal_log_prob(
      z[:, :, None, :], loc[None], scale[None])  # [K, B, M]
  log_q = tf.reduce_logsumexp(log_alpha[None] + log_q_components, axis=-1)  # [K, B]
  if flow is not None:
    z, log_det = flow(z, context)  # [K, B, D], [K, B]
    log_q = log_q - log_det
  return z, posterior.standard_normal_log_prob(z) - log_q


def importance_log_weights(decoder, x, log_alpha, loc, scale, num_samples, seed):
  """log p(x, z_k) - log Q(z_k|x) for z_k ~ Q: returns [K, B].

  Args:
    decoder: has log_prob(x [B, P], z [..., B, M, D]) -> [..., B, M].
    x: [B, P]; log_alpha: [B, M]; loc, scale: [B, M, D].
    num_samples: K (a Python int).
    seed: stateless seed, shape [2].
  """
  component, eps = draw_proposal_noise(log_alpha, num_samples, loc.shape[-1], seed)
  return importance_log_weights_from_noise(decoder, x, log_alpha, loc, scale, component, eps)


class Evaluator:
  """Compiled evaluation functions for one (encoder, decoder) pair.

  Args:
    encoder, decoder: the networks.
    xla: compile with XLA.
    split_decoder: for the importance samples, run the decoder's matmuls with
      TensorFlow's own kernels and only the sampling and density math under
      XLA. On a CPU, oneDNN's matmuls beat XLA's on these [K*B, H] x [H, P]
      products and the chunk is 14% faster (README, "Performance"). None: on
      when `xla` is on, no GPU is visible and the decoder has
      `log_prob_of_logits`. Same values either way, up to float rounding.
    strategy: None (one device), or a tf.distribute strategy (the networks'
      variables created in its scope) to shard every batch across its
      replicas (module docstring).
  """

  def __init__(self, encoder, decoder, *, xla: bool = True, refine=None, flow=None,
               split_decoder: bool = None, strategy=None):
    self.encoder = encoder
    self.decoder = decoder
    self.strategy = strategy
    self._sharded_elbo = tf.function(self._sharded_elbo_sums)
    self._sharded_ll = {}  # (num_samples, chunk) -> tf.function
    # flow: None, or the flow posterior of iaf / hf (rec_vae_tf.models.flows) that
    # every proposal sample is pushed through (the encoder has one component).
    self.flow = flow
    # refine: None, or the per-example refinement (x, loc, scale) -> (loc, scale)
    # of savae / vae_svi (`trainer.make_refine_fn`), applied wherever the
    # posterior is used: encoding (and its timing), proposal and ELBO.
    self.refine = refine
    if split_decoder is None:
      split_decoder = (xla and hasattr(decoder, 'log_prob_of_logits') and
                       not tf.config.list_physical_devices('GPU'))
    self.split_decoder = split_decoder
    self._encode = tf.function(functools.partial(_encode, encoder, refine=refine, flow=flow),
                               jit_compile=xla)
    self._infer = tf.function(functools.partial(_infer, encoder, refine=refine, flow=flow),
                              jit_compile=xla)
    self._draw = tf.function(draw_proposal_noise)
    if split_decoder:
      self._proposal = tf.function(functools.partial(proposal_samples, flow=flow),
                                   jit_compile=xla)
      self._logits = tf.function(decoder)  # never XLA-compiled
      self._combine = tf.function(self._combine_logsumexp, jit_compile=xla)
      self._chunk = self._split_chunk_logsumexp
    else:
      self._chunk = tf.function(self._chunk_logsumexp, jit_compile=xla)
    self._elbo = tf.function(self._elbo_terms, jit_compile=xla)
    # Sharded ELBO of savae / vae_svi: the refinement (whose draws depend on the
    # rows it is given) runs on the whole batch, the terms on a replica's rows.
    self._refined_posterior = tf.function(functools.partial(_posterior, encoder, refine=refine),
                                          jit_compile=xla)
    self._elbo_at = tf.function(self._elbo_terms_at, jit_compile=xla)

  def _chunk_logsumexp(self, x, log_alpha, loc, scale, component, eps, context=None):
    log_w = importance_log_weights_from_noise(
        self.decoder, x, log_alpha, loc, scale, component, eps, self.flow, context)  # [K, B]
    return tf.reduce_logsumexp(log_w, axis=0)  # [B]

  def _combine_logsumexp(self, x, logits, log_p_z_over_q):
    logits = tf.reshape(logits, tf.concat([tf.shape(log_p_z_over_q), [-1]], 0))  # [K, B, P]
    log_w = self.decoder.log_prob_of_logits(x, logits) + log_p_z_over_q  # [K, B]
    return tf.reduce_logsumexp(log_w, axis=0)  # [B]

  def _split_chunk_logsumexp(self, x, log_alpha, loc, scale, component, eps, context=None):
    z, log_p_z_over_q = self._proposal(log_alpha, loc, scale, component, eps,
                                       context=context)  # XLA
    # Rows [K * B, D]: on a matrix, TensorFlow fuses each layer's matmul, bias
    # and ReLU into one oneDNN call (on [K, B, D] they ran as separate ops).
    logits = self._logits(tf.reshape(z, [-1, z.shape[-1]]))  # [K * B, P], TensorFlow's matmuls
    return self._combine(x, logits, log_p_z_over_q)  # XLA

  def _elbo_terms(self, x, num_active, noise):
    eps_logit, loc, scale, features = _posterior(self.encoder, x, self.refine)
    return self._elbo_terms_at(x, num_active, noise, eps_logit, loc, scale, features)

  def _elbo_terms_at(self, x, num_active, noise, eps_logit, loc, scale, features):
    """The ELBO terms of batch x at a given posterior (`_posterior`'s outputs)."""
    if self.flow is not None:
      return objective.flow_terms(lambda z: self.decoder.log_prob(x, z), loc, scale,
                                  features, self.flow, noise)
    return objective.rme_terms(
        lambda z: self.decoder.log_prob(x, z), loc, scale, eps_logit, noise,
        num_active, kl_weight=0.0, prior_floor=0.0)

  def _replica_elbo_sums(self, x, num_active, noise):
    """On one replica: float64 sums of the ELBO terms over its rows of batch x, and their count."""
    n = int(x.shape[0])
    mask = distribute.row_mask(n)  # [b]
    if self.refine is None:
      terms = self._elbo(distribute.padded_rows(x, n), num_active,
                         distribute.padded_rows(noise, n, axis=1))
    else:
      eps_logit, loc, scale, _ = self._refined_posterior(x)  # the whole batch
      rows = lambda t, pad=0.0: distribute.padded_rows(t, n, 0, pad)
      terms = self._elbo_at(rows(x), num_active, distribute.padded_rows(noise, n, axis=1),
                            rows(eps_logit), rows(loc), rows(scale, pad=1.0), None)

    def masked_sum(values):  # [b, ...] -> float64 sum over the real rows
      values = tf.cast(values, tf.float64)
      keep = tf.reshape(mask, [-1] + [1] * (len(values.shape) - 1))
      return tf.reduce_sum(tf.where(keep, values, tf.zeros_like(values)), 0)

    return {'mixture_elbo': masked_sum(terms.mixture_elbo),
            'component_elbo': masked_sum(terms.component_elbo),  # [M]
            'mixture_weights': masked_sum(tf.exp(tf.cast(terms.log_alpha, tf.float64))),  # [M]
            'weight_entropy': masked_sum(posterior.weight_entropy(terms.log_alpha)),
            'count': masked_sum(tf.ones([tf.shape(mask)[0]]))}

  def _sharded_elbo_sums(self, x, num_active, noise):
    per_replica = self.strategy.run(self._replica_elbo_sums, args=(x, num_active, noise))
    return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for k, v in per_replica.items()}

  def _replica_log_likelihood_sum(self, x, num_active, seed, num_samples, chunk):
    """On one replica: the float64 sum of log p(x) over its rows of batch x, and their count.

    The draws and the per-example combination are `log_likelihood`'s.
    """
    n = int(x.shape[0])
    log_alpha, loc, scale, context = self._encode(x, num_active)  # the whole batch
    rows = lambda t, axis=0, pad=0.0: distribute.padded_rows(t, n, axis, pad)
    mine = (rows(x), rows(log_alpha), rows(loc), rows(scale, pad=1.0))
    context = None if context is None else rows(context)
    parts = []
    done, index = 0, 0
    while done < num_samples:
      k = min(chunk, num_samples - done)
      chunk_seed = tf.stack([seed, tf.constant(index, tf.int32)])
      component, eps = self._draw(log_alpha, k, loc.shape[-1], chunk_seed)  # whole batch
      parts.append(tf.cast(self._chunk(*mine, rows(component), rows(eps, axis=1), context),
                           tf.float64))  # [b]
      done += k
      index += 1
    stacked = tf.stack(parts, 0)  # [chunks, b]
    top = tf.reduce_max(stacked, 0)
    ll = top + tf.math.log(tf.reduce_sum(tf.exp(stacked - top), 0)) - math.log(num_samples)
    mask = distribute.row_mask(n)
    return (tf.reduce_sum(tf.where(mask, ll, tf.zeros_like(ll))),
            tf.reduce_sum(tf.cast(mask, tf.float64)))

  def sharded_log_likelihood_sum(self, x, num_active, num_samples: int, chunk: int,
                                 seed: int):
    """Under the strategy: (sum over batch x of log p(x), number of examples), float64."""
    key = (num_samples, chunk)
    if key not in self._sharded_ll:
      def total(x, num_active, seed):
        per_replica = self.strategy.run(
            self._replica_log_likelihood_sum, args=(x, num_active, seed, num_samples, chunk))
        return tuple(self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                     for v in per_replica)
      self._sharded_ll[key] = tf.function(total)
    total, count = self._sharded_ll[key](x, num_active, tf.constant(seed % 2**31, tf.int32))
    return float(total.numpy()), int(count.numpy())

  def log_likelihood(self, x, num_active, num_samples: int, chunk: int, seed: int) -> np.ndarray:
    """Importance-sampled log p(x) per example, float64 [B]."""
    log_alpha, loc, scale, context = self._encode(x, num_active)
    parts = []
    done = 0
    index = 0
    while done < num_samples:
      k = min(chunk, num_samples - done)
      chunk_seed = tf.constant([seed % 2**31, index], tf.int32)
      component, eps = self._draw(log_alpha, k, loc.shape[-1], chunk_seed)  # not XLA-compiled
      parts.append(self._chunk(x, log_alpha, loc, scale, component, eps,
                               context).numpy().astype(np.float64))
      done += k
      index += 1
    stacked = np.stack(parts, 0)  # [chunks, B]
    top = stacked.max(0)
    return top + np.log(np.exp(stacked - top).sum(0)) - math.log(num_samples)


def evaluate_elbo(encoder, decoder, dataset, num_active, *, seed: int, xla: bool = True,
                  evaluator: 'Evaluator' = None, refine=None, flow=None) -> Dict[str, float]:
  """Stratified mixture ELBO and per-component ELBOs over a dataset (float64 sums).

  `refine` (savae, vae_svi) and `flow` (iaf, hf) are used only when no
  `evaluator` is given; an evaluator carries its own, and its strategy (if
  any) shards every batch across replicas.
  """
  ev = evaluator or Evaluator(encoder, decoder, xla=xla, refine=refine, flow=flow)
  if ev.strategy is not None:
    return _sharded_elbo(ev, dataset, num_active, seed)
  total, count = 0.0, 0
  comp = None
  weights = None
  entropy = 0.0
  for i, x in enumerate(dataset):
    # Noise drawn outside the (XLA) ELBO function, as for the importance samples.
    noise = tf.random.stateless_normal(
        [1, x.shape[0], ev.encoder.num_components, ev.encoder.latent_dim],
        seed=tf.constant([seed, i], tf.int64))  # [1, B, M, D]
    terms = ev._elbo(x, num_active, noise)
    total += float(np.sum(terms.mixture_elbo.numpy().astype(np.float64)))
    c = terms.component_elbo.numpy().astype(np.float64).sum(0)
    a = np.exp(terms.log_alpha.numpy().astype(np.float64))
    comp = c if comp is None else comp + c
    weights = a.sum(0) if weights is None else weights + a.sum(0)
    entropy += float(np.sum(posterior.weight_entropy(terms.log_alpha).numpy().astype(np.float64)))
    count += int(x.shape[0])
  if count == 0:
    raise ValueError('empty evaluation dataset')
  return {'mixture_elbo': total / count,
          'component_elbo': (comp / count).tolist(),
          'mixture_weights': (weights / count).tolist(),
          'weight_entropy': entropy / count,
          'num_examples': count}


def _sharded_elbo(ev: Evaluator, dataset, num_active, seed: int) -> Dict[str, float]:
  """`evaluate_elbo` under ev.strategy: the same noise, float64 sums reduced across replicas."""
  totals = None
  for i, x in enumerate(dataset):
    noise = tf.random.stateless_normal(
        [1, x.shape[0], ev.encoder.num_components, ev.encoder.latent_dim],
        seed=tf.constant([seed, i], tf.int64))  # [1, B, M, D], as without a strategy
    sums = {k: v.numpy() for k, v in ev._sharded_elbo(x, num_active, noise).items()}
    totals = sums if totals is None else {k: totals[k] + sums[k] for k in totals}
  count = int(totals['count']) if totals else 0
  if count == 0:
    raise ValueError('empty evaluation dataset')
  return {'mixture_elbo': float(totals['mixture_elbo']) / count,
          'component_elbo': (totals['component_elbo'] / count).tolist(),
          'mixture_weights': (totals['mixture_weights'] / count).tolist(),
          'weight_entropy': float(totals['weight_entropy']) / count,
          'num_examples': count}


def evaluate(encoder, decoder, dataset, num_active, *, num_samples: int, chunk: int,
             seed: int, xla: bool = True, log=None, refine=None, flow=None,
             strategy=None) -> Dict[str, float]:
  """Test log-likelihood (importance sampling), test ELBO and the posterior summary.

  Args:
    encoder, decoder: the trained networks.
    dataset: batches of images [B, P] (evaluated once each): binary, or pixel
      values for a discretized-logistic decoder.
    num_active: number of active mixture components.
    num_samples: K importance samples per image.
    chunk: samples per compiled chunk.
    seed: evaluation seed (the same seed gives the same estimate).
    log: optional progress callback.
    refine: None, or the per-example refinement of savae / vae_svi
      (`trainer.make_refine_fn`): proposal, ELBO and encoder time then use
      the refined posterior.
    flow: None, or the flow of iaf / hf (`trainer.Trainer.flow`): the
      proposal and ELBO then use the flow posterior.
    strategy: None (one device), or the tf.distribute strategy the networks
      were created under: every batch is sharded across its replicas and the
      float64 sums reduced (module docstring); the same estimate up to float
      rounding.
  Returns:
    dict with test_log_likelihood (nats per image), test_bits_per_dim
    (-test_log_likelihood / (P ln 2), the unit colour-image results are given
    in), num_dims (P), test_elbo, component_elbo, mixture_weights,
    weight_entropy, num_importance_samples, num_examples, encoder_ms_per_batch.
  """
  ev = Evaluator(encoder, decoder, xla=xla, refine=refine, flow=flow, strategy=strategy)
  num_active = tf.constant(int(num_active), tf.int32)
  elbo = evaluate_elbo(encoder, decoder, dataset, num_active, seed=seed + 1, evaluator=ev)
  mean_ll, count, num_dims = mean_log_likelihood(ev, dataset, num_active, num_samples=num_samples,
                                                 chunk=chunk, seed=seed, log=log)
  encoder_ms = encoder_time_ms(ev, dataset, num_active)
  return {'test_log_likelihood': mean_ll,
          'test_bits_per_dim': likelihoods.bits_per_dim(mean_ll, num_dims),
          'num_dims': num_dims,
          'test_elbo': elbo['mixture_elbo'],
          'component_elbo': elbo['component_elbo'],
          'mixture_weights': elbo['mixture_weights'],
          'weight_entropy': elbo['weight_entropy'],
          'num_importance_samples': int(num_samples),
          'num_examples': count,
          'encoder_ms_per_batch': encoder_ms}


def mean_log_likelihood(ev: Evaluator, dataset, num_active, *, num_samples: int, chunk: int,
                        seed: int, log=None):
  """Importance-sampled log p(x) averaged over a dataset: (mean, examples, pixels per image).

  Batch i is estimated with seed `seed * 100003 + i`; the per-example
  estimates are summed in float64 and divided by the exact example count.
  Under the evaluator's strategy every batch is sharded across its replicas.
  """
  total, count, num_dims = 0.0, 0, None
  start = time.perf_counter()
  batches = None
  for i, x in enumerate(dataset):
    if ev.strategy is not None:
      batch_total, batch_count = ev.sharded_log_likelihood_sum(
          x, num_active, num_samples, chunk, seed=seed * 100003 + i)
      total += batch_total
      count += batch_count
    else:
      ll = ev.log_likelihood(x, num_active, num_samples, chunk, seed=seed * 100003 + i)
      total += float(ll.sum())
      count += ll.shape[0]
    num_dims = int(x.shape[-1])
    if log is not None and (i + 1) % 10 == 0:
      elapsed = time.perf_counter() - start
      batches = batches or sum(1 for _ in dataset)
      log(f'  importance sampling: {i + 1}/{batches} batches, running log p(x) '
          f'{total / count:.3f}, ETA {elapsed / (i + 1) * (batches - i - 1):.0f}s')
  if count == 0:
    raise ValueError('empty evaluation dataset')
  return total / count, count, num_dims


def encoder_time_ms(ev: Evaluator, dataset, num_active, repeats: int = 20) -> float:
  """Median wall time of one posterior pass over the first batch, in ms.

  The encoder's feed-forward pass, plus the refinement steps when the
  evaluator has `refine` (savae, vae_svi) and one pass of the flow when it has
  `flow` (iaf, hf): the test-time cost of each method.
  """
  x = next(iter(dataset))
  [t.numpy() for t in ev._infer(x, num_active)]  # warm-up / compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    [t.numpy() for t in ev._infer(x, num_active)]  # pylint: disable=expression-not-assigned
    times.append((time.perf_counter() - start) * 1e3)
  return float(np.median(times))
