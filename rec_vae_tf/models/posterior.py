"""The recursive mixture posterior Q(z|x) (RME.md, "Notation").

  Q_1 = q_1,   Q_m = (1 - eps_m) Q_{m-1} + eps_m q_m,   so
  Q_n = sum_j alpha_j q_j,   alpha_j = eps_j * prod_{j<i<=n} (1 - eps_i),  eps_1 = 1.

Weights live in log space: log eps = log_sigmoid(u), log(1 - eps) = log_sigmoid(-u).
Capacity is fixed at M components; the first `num_active` take part and the
rest carry `INACTIVE_LOG_WEIGHT`, a large finite negative number (never -inf,
so no NaN reaches a gradient), which makes them contribute exactly zero.

Shapes: S samples, B batch, M components, D latent size.
"""

import math

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

INACTIVE_LOG_WEIGHT = -1e9
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _log_eps_terms(eps_logit):
  """Returns (log eps, C): log eps_1 = 0 and C_k = sum_{2<=l<=k} log(1 - eps_l), both [B, M]."""
  num_components = eps_logit.shape[-1]
  first = tf.one_hot(0, num_components, dtype=eps_logit.dtype)  # [M]
  log_eps = tf.math.log_sigmoid(eps_logit) * (1.0 - first)  # [B, M]
  log_one_minus_eps = tf.math.log_sigmoid(-eps_logit) * (1.0 - first)  # [B, M]
  return log_eps, tf.cumsum(log_one_minus_eps, axis=-1)


def recursive_log_weights(eps_logit, num_active):
  """log alpha_j of Q_{num_active}: [B, M] -> [B, M]; inactive columns INACTIVE_LOG_WEIGHT."""
  num_components = eps_logit.shape[-1]
  log_eps, cum = _log_eps_terms(eps_logit)
  last = tf.gather(cum, tf.maximum(num_active - 1, 0), axis=-1)[..., None]  # [B, 1]
  active = tf.range(num_components) < num_active  # [M]
  return tf.where(active, log_eps + last - cum, INACTIVE_LOG_WEIGHT)


def predecessor_log_weights(eps_logit):
  """log weight of component i in Q_{m-1}, the mixture before m was added.

  Returns [B, M_i, M_m]; entry (i, m) is finite for i < m and
  INACTIVE_LOG_WEIGHT otherwise (column m = 0 has no predecessor at all).
  """
  num_components = eps_logit.shape[-1]
  log_eps, cum = _log_eps_terms(eps_logit)
  # C_{m-1} for each m (C_{-1} := 0; column 0 is masked anyway).
  cum_before = tf.concat([tf.zeros_like(cum[:, :1]), cum[:, :-1]], axis=-1)  # [B, M_m]
  table = log_eps[:, :, None] + cum_before[:, None, :] - cum[:, :, None]  # [B, M_i, M_m]
  index = tf.range(num_components)
  earlier = index[:, None] < index[None, :]  # [M_i, M_m]
  return tf.where(earlier, table, INACTIVE_LOG_WEIGHT)


def diag_normal_log_prob(z, loc, scale):
  """log N(z; loc, diag(scale^2)) summed over the last axis."""
  u = (z - loc) / scale
  return tf.reduce_sum(-0.5 * tf.square(u) - tf.math.log(scale) - _HALF_LOG_2PI, axis=-1)


def standard_normal_log_prob(z):
  """log p(z) for p = N(0, I), summed over the last axis."""
  return tf.reduce_sum(-0.5 * tf.square(z) - _HALF_LOG_2PI, axis=-1)


def component_log_prob_table(z, loc, scale):
  """log q_i(z_j|x) for every pair of components.

  Args:
    z: [S, B, M_j, D] one sample per component j.
    loc, scale: [B, M_i, D].
  Returns:
    [S, B, M_i, M_j].
  """
  z = z[:, :, None, :, :]  # [S, B, 1, M_j, D]
  return diag_normal_log_prob(z, loc[None, :, :, None, :], scale[None, :, :, None, :])


def mixture_log_prob(log_weights, component_log_probs):
  """log sum_i w_i q_i(z): logsumexp over the component axis -2.

  Args:
    log_weights: [B, M_i] (or [B, M_i, M_j] for a different mixture per column).
    component_log_probs: [S, B, M_i, M_j] from `component_log_prob_table`.
  Returns:
    [S, B, M_j].
  """
  if len(log_weights.shape) == 2:
    log_weights = log_weights[:, :, None]  # [B, M_i, 1]
  return tf.reduce_logsumexp(log_weights[None] + component_log_probs, axis=-2)


def components(loc, scale):
  """The M Gaussians as one TFP distribution: batch [B, M], event [D]."""
  return tfd.Independent(tfd.Normal(loc=loc, scale=scale), reinterpreted_batch_ndims=1)


def q_z_given_x(log_alpha, loc, scale):
  """Q(z|x) = sum_j alpha_j q_j(z|x) as `tfd.MixtureSameFamily`: batch [B], event [D]."""
  return tfd.MixtureSameFamily(
      mixture_distribution=tfd.Categorical(logits=log_alpha),
      components_distribution=components(loc, scale))


def weight_entropy(log_alpha):
  """Entropy of the mixture weights in nats per example: [B, M] -> [B]."""
  alpha = tf.exp(log_alpha)
  safe = tf.where(alpha > 0, log_alpha, tf.zeros_like(log_alpha))
  return -tf.reduce_sum(alpha * safe, axis=-1)
