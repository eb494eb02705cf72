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

Every function here takes the run's method (rec_vae_tf.methods): its
posterior (refined per example for savae / vae_svi), its transform (the flow
of iaf / hf, applied to every importance sample) and its ELBO terms, so the
proposal, the ELBO and the timed inference pass are each method's own.
"""

import functools
import math
import time
from typing import Dict, NamedTuple

import numpy as np
import tensorflow as tf

from rec_vae_tf.training import distribute
from rec_vae_tf.models import likelihoods
from rec_vae_tf.models import posterior


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
                                      transform=None, context=None):
  """log p(x, z_k) - log Q(z_k|x) at z_k = loc[c_k] + scale[c_k] * eps_k: returns [K, B].

  Args:
    decoder: has log_prob(x [B, P], z [..., B, M, D]) -> [..., B, M].
    x: [B, P]; log_alpha: [B, M]; loc, scale: [B, M, D].
    component: [B, K] int32 component of each sample; eps: [K, B, D]
      (from `draw_proposal_noise`).
    transform, context: None, or the method's transform (iaf / hf: the flow,
      (z [K, B, D], context [B, H]) -> (z_T, log|det| [K, B])) applied to
      every sample, and its context.
  """
  z, log_p_z_over_q = proposal_samples(log_alpha, loc, scale, component, eps,
                                       transform, context)  # [K, B, D], [K, B]
  # decoder.log_prob wants a component axis: treat the K samples as [K, B, 1, D].
  log_p_x_given_z = decoder.log_prob(x, z[:, :, None, :])[..., 0]  # [K, B]
  return log_p_x_given_z + log_p_z_over_q


def proposal_samples(log_alpha, loc, scale, component, eps, transform=None, context=None):
  """z_k = loc[c_k] + scale[c_k] * eps_k and log p(z_k) - log Q(z_k|x).

  With a transform (the flow of iaf, hf; M = 1), z_k is pushed through it and
  log Q(z_T) = log q_0(z_0) - log|det|.

  Args:
    log_alpha: [B, M]; loc, scale: [B, M, D]; component: [B, K] int32; eps: [K, B, D].
    transform, context: None, or the method's transform and its context [B, H].
  Returns:
    (z [K, B, D], log_p_z_over_q [K, B]).
  """
  loc_k = tf.transpose(tf.gather(loc, component, batch_dims=1), [1, 0, 2])  # [K, B, D]
  scale_k = tf.transpose(tf.gather(scale, component, batch_dims=1), [1, 0, 2])  # [K, B, D]
  z = loc_k + scale_k * eps  # [K, B, D]
  log_q_components = posterior.diag_normal_log_prob(
      z[:, :, None, :], loc[None], scale[None])  # [K, B, M]
  log_q = tf.reduce_logsumexp(log_alpha[None] + log_q_components, axis=-1)  # [K, B]
  if transform is not None:
    z, log_det = transform(z, context)  # [K, B, D], [K, B]
    log_q = log_q - log_det
  return z, posterior.standard_normal_log_prob(z) - log_q


def chunk_logsumexp(method, x, post, component, eps):
  """logsumexp_k [log p(x, z_k) - log Q(z_k|x)] over one chunk of draws: [B].

  The one importance-sampling chunk of every evaluation: validation, the
  evaluator (`Evaluator`, which on a CPU runs the same math with the
  decoder's matmuls split out) and the exported log_likelihood signature.

  Args:
    method: the run's `methods.base.Method`.
    x: [B, P]; post: `method.posterior(x, num_active)`.
    component: [B, K] int32, eps: [K, B, D] (`draw_proposal_noise`).
  """
  log_w = importance_log_weights_from_noise(
      method.decoder, x, post.log_alpha, post.loc, post.scale, component, eps,
      method.transform, post.context)  # [K, B]
  return tf.reduce_logsumexp(log_w, axis=0)  # [B]


def stratified_chunk_logsumexp(method, x, post, eps):
  """logsumexp_s [log p(x, z_js) - log Q(z_js|x)] for each component j: [B, M].

  z_js = loc_j + scale_j * eps_sj: each component's own samples (through the
  method's transform, for a flow posterior, which has one component).

  Args:
    method: the run's `methods.base.Method`; x: [B, P]; post: its posterior.
    eps: [S, B, M, D] standard normal draws.
  """
  z = post.loc[None] + post.scale[None] * eps  # [S, B, M, D]
  table = posterior.component_log_prob_table(z, post.loc, post.scale)  # [S, B, M_i, M_j]
  log_q = posterior.mixture_log_prob(post.log_alpha, table)  # [S, B, M]
  if method.transform is not None:  # a flow posterior: M = 1
    z_t, log_det = method.transform(z[:, :, 0], post.context)  # [S, B, D], [S, B]
    z, log_q = z_t[:, :, None], log_q - log_det[..., None]
  log_w = (method.decoder.log_prob(x, z) + posterior.standard_normal_log_prob(z) -
           log_q)  # [S, B, M]
  return tf.reduce_logsumexp(log_w, axis=0)  # [B, M]


class Evaluator:
  """Compiled evaluation functions for one run's method (its networks and posterior).

  Args:
    method: the run's `methods.base.Method`.
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

  def __init__(self, method, *, xla: bool = True, split_decoder: bool = None, strategy=None):
    self.method = method
    self.encoder = method.encoder
    self.decoder = method.decoder
    self.strategy = strategy
    self._sharded_elbo = tf.function(self._sharded_elbo_sums)
    self._sharded_ll = {}  # (num_samples, chunk) -> tf.function
    if split_decoder is None:
      split_decoder = (xla and hasattr(self.decoder, 'log_prob_of_logits') and
                       not tf.config.list_physical_devices('GPU'))
    self.split_decoder = split_decoder
    self._encode = tf.function(method.posterior, jit_compile=xla)
    self._infer = tf.function(method.infer, jit_compile=xla)
    self._draw = tf.function(draw_proposal_noise)
    if split_decoder:
      self._proposal = tf.function(
          functools.partial(proposal_samples, transform=method.transform), jit_compile=xla)
      self._logits = tf.function(self.decoder)  # never XLA-compiled
      self._combine = tf.function(self._combine_logsumexp, jit_compile=xla)
      self._chunk = self._split_chunk_logsumexp
    else:
      self._chunk = tf.function(functools.partial(chunk_logsumexp, method), jit_compile=xla)
    self._elbo = tf.function(self._elbo_terms, jit_compile=xla)
    self._elbo_at = tf.function(method.elbo_terms, jit_compile=xla)
    self._draw_stratified = tf.function(
        lambda shape, seed: tf.random.stateless_normal(shape, seed=seed))
    self._stratified_chunk = tf.function(functools.partial(stratified_chunk_logsumexp, method),
                                         jit_compile=xla)

  def _combine_logsumexp(self, x, logits, log_p_z_over_q):
    logits = tf.reshape(logits, tf.concat([tf.shape(log_p_z_over_q), [-1]], 0))  # [K, B, P]
    log_w = self.decoder.log_prob_of_logits(x, logits) + log_p_z_over_q  # [K, B]
    return tf.reduce_logsumexp(log_w, axis=0)  # [B]

  def _split_chunk_logsumexp(self, x, post, component, eps):
    """`chunk_logsumexp` with the decoder's matmuls outside XLA."""
    z, log_p_z_over_q = self._proposal(post.log_alpha, post.loc, post.scale, component, eps,
                                       context=post.context)  # XLA
    # Rows [K * B, D]: on a matrix, TensorFlow fuses each layer's matmul, bias
    # and ReLU into one oneDNN call (on [K, B, D] they ran as separate ops).
    logits = self._logits(tf.reshape(z, [-1, z.shape[-1]]))  # [K * B, P], TensorFlow's matmuls
    return self._combine(x, logits, log_p_z_over_q)  # XLA

  def _elbo_terms(self, x, num_active, noise):
    return self.method.elbo_terms(x, num_active, noise, self.method.posterior(x, num_active))

  def _replica_elbo_sums(self, x, num_active, noise):
    """On one replica: float64 sums of the ELBO terms over its rows of batch x, and their count."""
    n = int(x.shape[0])
    mask = distribute.row_mask(n)  # [b]
    if not self.method.batch_coupled_posterior:
      terms = self._elbo(distribute.padded_rows(x, n), num_active,
                         distribute.padded_rows(noise, n, axis=1))
    else:
      post = self._encode(x, num_active)  # the whole batch (e.g. its refinement draws)
      terms = self._elbo_at(distribute.padded_rows(x, n), num_active,
                            distribute.padded_rows(noise, n, axis=1), _posterior_rows(post, n))

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

  def _chunk_logsumexps(self, x, post, num_samples, chunk, seed, rows=None):
    """The per-chunk logsumexps [chunks][B] of K = num_samples samples; chunk i seeds [seed, i].

    rows: None, or (t, axis) -> this replica's rows of t (the draws are made
    for the whole batch, as without a strategy).
    """
    parts = []
    done, index = 0, 0
    while done < num_samples:
      k = min(chunk, num_samples - done)
      chunk_seed = tf.stack([tf.cast(seed, tf.int32), tf.constant(index, tf.int32)])
      component, eps = self._draw(post.log_alpha, k, post.loc.shape[-1], chunk_seed)  # [B, k], [k, B, D]
      if rows is not None:
        x_rows, post_rows = rows(x, 0), _posterior_rows(post, int(x.shape[0]))
        component, eps = rows(component, 0), rows(eps, 1)
      else:
        x_rows, post_rows = x, post
      parts.append(self._chunk(x_rows, post_rows, component, eps))  # [B]
      done += k
      index += 1
    return parts

  def _replica_log_likelihood_sum(self, x, num_active, seed, num_samples, chunk):
    """On one replica: the float64 sum of log p(x) over its rows of batch x, and their count.

    The draws and the per-example combination are `log_likelihood`'s.
    """
    n = int(x.shape[0])
    post = self._encode(x, num_active)  # the whole batch
    rows = lambda t, axis: distribute.padded_rows(t, n, axis)
    parts = self._chunk_logsumexps(x, post, num_samples, chunk, seed, rows)
    stacked = tf.cast(tf.stack(parts, 0), tf.float64)  # [chunks, b]
    top = tf.reduce_max(stacked, 0)
    ll = top + tf.math.log(tf.reduce_sum(tf.exp(stacked - top), 0)) - math.log(num_samples)
    mask = distribute.row_mask(n)
    mine = lambda t: tf.where(mask, t, tf.zeros_like(t))
    return (tf.reduce_sum(mine(ll)), tf.reduce_sum(mine(tf.square(ll))),
            tf.reduce_sum(tf.cast(mask, tf.float64)))

  def sharded_log_likelihood_sum(self, x, num_active, num_samples: int, chunk: int,
                                 seed: int):
    """Under the strategy: (sum over batch x of log p(x), sum of squares, examples), float64."""
    key = (num_samples, chunk)
    if key not in self._sharded_ll:
      def total(x, num_active, seed):
        per_replica = self.strategy.run(
            self._replica_log_likelihood_sum, args=(x, num_active, seed, num_samples, chunk))
        return tuple(self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                     for v in per_replica)
      self._sharded_ll[key] = tf.function(total)
    total, squares, count = self._sharded_ll[key](x, num_active,
                                                  tf.constant(seed % 2**31, tf.int32))
    return float(total.numpy()), float(squares.numpy()), int(count.numpy())

  def stratified_log_likelihood(self, x, num_active, num_samples: int, chunk: int,
                                seed: int) -> np.ndarray:
    """Stratified importance-sampled log p(x) per example, float64 [B].

    K // n samples from each of the n active components (at least one each),
    drawn chunk // M per component at a time; chunk i seeds [seed, i]:
    p(x) ~= sum_j alpha_j(x) mean_s p(x, z_js) / Q(z_js|x), z_js ~ q_j
    (`stratified_chunk_logsumexp`). Unbiased like the mixture estimator, with
    no variance from drawing the component.
    """
    post = self._encode(x, num_active)
    num_components, latent_dim = post.loc.shape[-2], post.loc.shape[-1]
    per_component = max(num_samples // int(num_active), 1)
    size = max(chunk // num_components, 1)
    parts, done, index = [], 0, 0
    while done < per_component:
      k = min(size, per_component - done)
      eps = self._draw_stratified([k, x.shape[0], num_components, latent_dim],
                                  tf.constant([seed % 2**31, index], tf.int32))
      parts.append(self._stratified_chunk(x, post, eps).numpy().astype(np.float64))  # [B, M]
      done += k
      index += 1
    per = _logsumexp_np(np.stack(parts, 0), 0) - math.log(per_component)  # [B, M]
    return _logsumexp_np(post.log_alpha.numpy().astype(np.float64) + per, -1)

  def log_likelihood(self, x, num_active, num_samples: int, chunk: int, seed: int) -> np.ndarray:
    """Importance-sampled log p(x) per example, float64 [B]."""
    post = self._encode(x, num_active)
    parts = self._chunk_logsumexps(x, post, num_samples, chunk, seed % 2**31)
    stacked = np.stack([p.numpy().astype(np.float64) for p in parts], 0)  # [chunks, B]
    top = stacked.max(0)
    return top + np.log(np.exp(stacked - top).sum(0)) - math.log(num_samples)


def _logsumexp_np(values: np.ndarray, axis: int) -> np.ndarray:
  top = values.max(axis, keepdims=True)
  return np.squeeze(top, axis) + np.log(np.exp(values - top).sum(axis))


def _posterior_rows(post, n):
  """A replica's rows of a posterior (padding: scale 1, so densities stay finite)."""
  rows = lambda t, pad=0.0: None if t is None else distribute.padded_rows(t, n, 0, pad)
  return post._replace(log_alpha=rows(post.log_alpha), loc=rows(post.loc),
                       scale=rows(post.scale, pad=1.0), eps_logit=rows(post.eps_logit),
                       context=rows(post.context))


def evaluate_elbo(ev: Evaluator, dataset, num_active, *, seed: int) -> Dict[str, float]:
  """Stratified mixture ELBO and per-component ELBOs over a dataset (float64 sums).

  Under the evaluator's strategy (if any) every batch is sharded across replicas.
  """
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


def evaluate(method, dataset, num_active, *, num_samples: int, chunk: int, seed: int,
             xla: bool = True, log=None, strategy=None, stratified: bool = False
             ) -> Dict[str, float]:
  """Test log-likelihood (importance sampling), test ELBO and the posterior summary.

  Args:
    method: the run's `methods.base.Method` (networks and posterior: the
      proposal, the ELBO and the timed pass are the method's own).
    dataset: batches of images [B, P] (evaluated once each): binary, or pixel
      values for a discretized-logistic decoder.
    num_active: number of active mixture components.
    num_samples: K importance samples per image.
    chunk: samples per compiled chunk.
    seed: evaluation seed (the same seed gives the same estimate).
    log: optional progress callback.
    strategy: None (one device), or the tf.distribute strategy the networks
      were created under: every batch is sharded across its replicas and the
      float64 sums reduced (module docstring); the same estimate up to float
      rounding.
    stratified: also the stratified estimate (`mean_log_likelihood`), same K.
  Returns:
    dict with test_log_likelihood (nats per image) and its standard error
    test_log_likelihood_se (with `stratified`: test_log_likelihood_stratified
    and its _se too), test_bits_per_dim
    (-test_log_likelihood / (P ln 2), the unit colour-image results are given
    in), num_dims (P), test_elbo, component_elbo, mixture_weights,
    weight_entropy, num_importance_samples, num_examples, encoder_ms_per_batch.
  """
  ev = Evaluator(method, xla=xla, strategy=strategy)
  num_active = tf.constant(int(num_active), tf.int32)
  elbo = evaluate_elbo(ev, dataset, num_active, seed=seed + 1)
  estimate = mean_log_likelihood(ev, dataset, num_active, num_samples=num_samples, chunk=chunk,
                                 seed=seed, log=log)
  extra = {}
  if stratified and int(num_active) == 1:
    # One component: K samples from it, weighted by alpha = 1, is the plain estimator itself
    # (the same distribution of estimates), so its draws are not repeated.
    extra = {'test_log_likelihood_stratified': estimate.mean,
             'test_log_likelihood_stratified_se': estimate.standard_error}
  elif stratified:
    strat = mean_log_likelihood(ev, dataset, num_active, num_samples=num_samples, chunk=chunk,
                                seed=seed, estimator='stratified', log=log)
    extra = {'test_log_likelihood_stratified': strat.mean,
             'test_log_likelihood_stratified_se': strat.standard_error}
  encoder_ms = encoder_time_ms(ev, dataset, num_active)
  return {'test_log_likelihood': estimate.mean,
          'test_log_likelihood_se': estimate.standard_error,
          **extra,
          'test_bits_per_dim': likelihoods.bits_per_dim(estimate.mean, estimate.num_dims),
          'num_dims': estimate.num_dims,
          'test_elbo': elbo['mixture_elbo'],
          'component_elbo': elbo['component_elbo'],
          'mixture_weights': elbo['mixture_weights'],
          'weight_entropy': elbo['weight_entropy'],
          'num_importance_samples': int(num_samples),
          'num_examples': estimate.num_examples,
          'encoder_ms_per_batch': encoder_ms}


ESTIMATORS = ('mixture', 'stratified')


class LikelihoodEstimate(NamedTuple):
  """An importance-sampled log p(x) over a dataset."""
  mean: float            # nats per example
  standard_error: float  # std of the per-example estimates / sqrt(examples)
  num_examples: int
  num_dims: int          # pixels per image


def mean_log_likelihood(ev: Evaluator, dataset, num_active, *, num_samples: int, chunk: int,
                        seed: int, estimator: str = 'mixture', log=None) -> LikelihoodEstimate:
  """Importance-sampled log p(x) averaged over a dataset, with its standard error.

  estimator: 'mixture' (K samples from Q: a component drawn from alpha(x),
  then z from it; `Evaluator.log_likelihood`) or 'stratified' (K / n from each
  of the n active components; `Evaluator.stratified_log_likelihood`; one
  device only). Batch i is estimated with seed `seed * 100003 + i`; the
  per-example estimates are summed in float64 and divided by the exact
  example count. Under the evaluator's strategy every batch is sharded across
  its replicas.
  """
  if estimator not in ESTIMATORS:
    raise ValueError(f'estimator={estimator!r}; allowed: {", ".join(ESTIMATORS)}')
  if estimator == 'stratified' and ev.strategy is not None:
    raise ValueError('the stratified estimator runs on one device (no strategy)')
  per_batch = ev.log_likelihood if estimator == 'mixture' else ev.stratified_log_likelihood
  total, squares, count, num_dims = 0.0, 0.0, 0, None
  start = time.perf_counter()
  batches = None
  for i, x in enumerate(dataset):
    if ev.strategy is not None:
      batch_total, batch_squares, batch_count = ev.sharded_log_likelihood_sum(
          x, num_active, num_samples, chunk, seed=seed * 100003 + i)
    else:
      ll = per_batch(x, num_active, num_samples, chunk, seed=seed * 100003 + i)
      batch_total, batch_squares, batch_count = float(ll.sum()), float(np.square(ll).sum()), len(ll)
    total += batch_total
    squares += batch_squares
    count += batch_count
    num_dims = int(x.shape[-1])
    if log is not None and (i + 1) % 10 == 0:
      elapsed = time.perf_counter() - start
      batches = batches or sum(1 for _ in dataset)
      log(f'  importance sampling ({estimator}): {i + 1}/{batches} batches, running log p(x) '
          f'{total / count:.3f}, ETA {elapsed / (i + 1) * (batches - i - 1):.0f}s')
  if count == 0:
    raise ValueError('empty evaluation dataset')
  mean = total / count
  variance = max(squares / count - mean * mean, 0.0) * count / max(count - 1, 1)
  return LikelihoodEstimate(mean, math.sqrt(variance / count), count, num_dims)


def encoder_time_ms(ev: Evaluator, dataset, num_active, repeats: int = 20) -> float:
  """Median wall time of one posterior pass over the first batch, in ms.

  The method's inference pass (`Method.infer`): the encoders' feed-forward
  pass, plus the refinement steps of savae / vae_svi and one flow pass of
  iaf / hf: the test-time cost of each method.
  """
  x = next(iter(dataset))
  [t.numpy() for t in ev._infer(x, num_active)]  # warm-up / compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    [t.numpy() for t in ev._infer(x, num_active)]  # pylint: disable=expression-not-assigned
    times.append((time.perf_counter() - start) * 1e3)
  return float(np.median(times))
