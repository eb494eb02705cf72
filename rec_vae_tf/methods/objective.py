"""RME objectives as pure functions returning per-example values (RME.md).

For each example x, one reparameterized sample z_j ~ q_j(z|x) per component
(S of them) feeds every objective:

  component 1:   J_1 = ELBO(q_1; x) = E_{q_1}[log p(x|z) + log p(z) - log q_1(z|x)]
  component m>1: J_m = E_{q_m}[log p(x|z) + log p(z) - (1-lambda) log q_m(z|x)
                               - lambda log Qt_{m-1}(z|x)]
                 Qt_{m-1} = (1 - delta) Q_{m-1} + delta p(z)      (defensive floor)
                 i.e. ELBO(q_m) + lambda KL(q_m || Qt_{m-1}).
  mixture bound: ELBO(Q; x) = sum_j alpha_j E_{q_j}[log p(x|z) + log p(z) - log Q(z|x)]
                 (stratified: exact in expectation, no discrete sampling).

Q_{m-1} is held fixed inside J_m: the predecessors' parameters and weights are
stopped, the sample z_m is not. Which variables each value trains is the
trainer's business (it takes each gradient w.r.t. its own group); this module
only guarantees the stop-gradients that make J_m a function of phi_m alone.

Shapes: S samples, B batch, M components, D latent size.
"""

import math
from typing import Callable, NamedTuple, Optional

import tensorflow as tf
import tensorflow_probability as tfp

from rec_vae_tf.models import posterior


class RMETerms(NamedTuple):
  """Per-example values of one forward pass."""
  component_objective: tf.Tensor  # [B, M] J_m (J_1 is the ELBO of q_1); zero where inactive
  component_elbo: tf.Tensor       # [B, M] ELBO(q_m; x); zero where inactive
  mixture_elbo: tf.Tensor         # [B] stratified ELBO(Q_active; x)
  log_alpha: tf.Tensor            # [B, M] mixture log weights (inactive: very negative)
  log_p_x_given_z: tf.Tensor      # [B, M] E_{q_m} log p(x|z), the reconstruction term
  iwae: tf.Tensor                 # [B, M] IWAE bound of q_m with its S samples; zero where inactive
  # [B] the importance-weighted mixture bound (SIWAE), only when asked for (rme_terms'
  # importance_weighted): logsumexp_{s,j}(log alpha_j + log p(x, z_sj) - log Q(z_sj|x)) - log S.
  mixture_iw: Optional[tf.Tensor] = None
  # [B, M] the doubly-reparameterized (DReG; Tucker et al. 2019) surrogate of each
  # component's IWAE bound, only when asked for (rme_terms' dreg): its gradient w.r.t.
  # the encoder is DReG's estimate of the IWAE bound's (`dreg_surrogate`).
  iwae_dreg: Optional[tf.Tensor] = None


COMPONENT_OBJECTIVES = ('kl', 'entropy')


def boosted_entropy_weights(num_components: int):
  """lambda'_m = 1 / sqrt(m) (1-based m): the annealed entropy weight of boosted VI's RELBO."""
  return tf.constant([1.0 / math.sqrt(m + 1) for m in range(num_components)], tf.float32)


def _component_objectives(log_p_x_given_z, log_p_z, log_q_own, log_q_prev, kl_weight,
                          prior_floor, component_objective, num_components, dtype):
  """`rme_terms`' per-component terms: (log p(x, z), ELBO_m, J_m), each [S, B, M].

  log_q_prev is log Q_{m-1} of the (stopped) predecessor mixture, floored here
  by the prior when prior_floor > 0; the first component's J_1 is its ELBO.
  """
  if prior_floor > 0:
    log_q_prev = tf.reduce_logsumexp(tf.stack([
        math.log1p(-prior_floor) + log_q_prev,
        math.log(prior_floor) + log_p_z], axis=0), axis=0)  # [S, B, M]
  log_joint = log_p_x_given_z + log_p_z  # [S, B, M]
  elbo_m = log_joint - log_q_own  # [S, B, M]
  first = tf.cast(tf.range(num_components) == 0, dtype)  # [M]
  if component_objective == 'kl':
    j_m = log_joint - (1.0 - kl_weight) * log_q_own - kl_weight * log_q_prev  # [S, B, M]
  elif component_objective == 'entropy':
    entropy_weight = tf.cast(boosted_entropy_weights(num_components), dtype)  # [M]
    j_m = log_joint - entropy_weight * log_q_own - log_q_prev  # [S, B, M]
  else:
    raise ValueError(f'unknown component_objective {component_objective!r}')
  j_m = first * elbo_m + (1.0 - first) * j_m
  return log_joint, elbo_m, j_m


def rme_terms(
    log_p_x_given_z_fn: Callable[[tf.Tensor], tf.Tensor],
    loc: tf.Tensor,
    scale: tf.Tensor,
    eps_logit: tf.Tensor,
    noise: tf.Tensor,
    num_active: tf.Tensor,
    kl_weight: float,
    prior_floor: float,
    component_objective: str = 'kl',
    joint: bool = False,
    importance_weighted: bool = False,
    dreg: bool = False,
) -> RMETerms:
  """Evaluates all RME objectives from one batched decoder pass.

  Args:
    log_p_x_given_z_fn: z [S, B, M, D] -> log p(x|z) [S, B, M] (the decoder).
    loc, scale: [B, M, D] component parameters.
    eps_logit: [B, M] logits of eps_m (column 0 ignored: eps_1 = 1).
    noise: [S, B, M, D] standard normal draws.
    num_active: scalar int, number of active components n (1 <= n <= M).
    kl_weight: lambda in [0, 1).
    prior_floor: delta in [0, 1); 0 gives the raw KL to Q_{m-1}.
    component_objective: 'kl' (RME's J_m above) or 'entropy', boosted VI's
      RELBO (Locatello et al. 2018) in place of the KL:
      E_{q_m}[log p(x, z) - lambda'_m log q_m(z|x) - log Qt_{m-1}(z|x)] with
      the annealed lambda'_m = 1/sqrt(m) (the same floored Qt_{m-1}).
    joint: False for RME (the mixture bound sees the components' parameters
      stopped); True for the non-recursive mixture baseline, whose encoders
      are trained by the mixture bound itself, so its log Q keeps their
      gradients.
    importance_weighted: also return the importance-weighted mixture bound
      (`mixture_iw_bound`) from the same samples and log Q.
    dreg: also return each component's DReG surrogate (`dreg_surrogate`), from
      the same decoder pass.
  Returns:
    RMETerms.
  """
  num_components = loc.shape[-2]
  active = tf.range(num_components) < num_active  # [M]
  active_f = tf.cast(active, loc.dtype)

  z = loc[None] + scale[None] * noise  # [S, B, M, D]
  log_p_x_given_z = log_p_x_given_z_fn(z)  # [S, B, M]
  log_p_z = posterior.standard_normal_log_prob(z)  # [S, B, M]
  # log q_m(z_m) with live parameters: log N(loc + scale*e; loc, scale) in closed form.
  log_q_own = posterior.diag_normal_log_prob(noise, 0.0, 1.0) - tf.reduce_sum(
      tf.math.log(scale), axis=-1)[None]  # [S, B, M]
  # log q_i(z_j): predecessors' parameters stopped, the samples live.
  table = posterior.component_log_prob_table(
      z, tf.stop_gradient(loc), tf.stop_gradient(scale))  # [S, B, M_i, M_j]
  mixture_table = posterior.component_log_prob_table(z, loc, scale) if joint else table

  # Component objectives J_m against the stopped predecessor mixture.
  log_w_prev = posterior.predecessor_log_weights(tf.stop_gradient(eps_logit))  # [B, M_i, M_m]
  log_q_prev = posterior.mixture_log_prob(log_w_prev, table)  # [S, B, M]
  log_joint, elbo_m, j_m = _component_objectives(
      log_p_x_given_z, log_p_z, log_q_own, log_q_prev, kl_weight, prior_floor,
      component_objective, num_components, loc.dtype)  # [S, B, M] each

  # Stratified mixture bound over the active components.
  log_alpha = posterior.recursive_log_weights(eps_logit, num_active)  # [B, M]
  log_q_mix = posterior.mixture_log_prob(log_alpha, mixture_table)  # [S, B, M]
  per_component = tf.reduce_mean(log_joint - log_q_mix, axis=0) * active_f  # [B, M]
  mixture_elbo = tf.reduce_sum(tf.exp(log_alpha) * per_component, axis=-1)  # [B]

  return RMETerms(
      component_objective=tf.reduce_mean(j_m, axis=0) * active_f,
      component_elbo=tf.reduce_mean(elbo_m, axis=0) * active_f,
      mixture_elbo=mixture_elbo,
      log_alpha=log_alpha,
      log_p_x_given_z=tf.reduce_mean(log_p_x_given_z, axis=0) * active_f,
      iwae=iwae_bound(elbo_m) * active_f,
      mixture_iw=(mixture_iw_bound(log_alpha, log_joint - log_q_mix) if importance_weighted
                  else None),
      iwae_dreg=(dreg_surrogate(log_joint, elbo_m, z, loc, scale) * active_f if dreg else None))


def dreg_surrogate(log_joint, log_weights, z, loc, scale):
  """A surrogate whose encoder gradient is DReG's estimate of the IWAE bound's: [B, M].

  DReG (Tucker et al. 2019): d/dphi log (1/S) sum_s w_s is estimated by
  sum_s wt_s^2 d log w_s / dz_s dz_s / dphi, wt = softmax_s log w, with log q's
  parameters held fixed inside log w (only the path through z_s = loc + scale * eps_s
  carries phi): the score-function term, whose variance grows with S, is gone.

  Args:
    log_joint: [S, B, M] log p(x, z) with z live; log_weights: [S, B, M] log p(x, z) -
      log q(z) (for the stopped normalized weights wt); z: [S, B, M, D]; loc, scale:
      [B, M, D] the proposal's parameters (stopped here).
  """
  log_q_fixed = posterior.diag_normal_log_prob(
      z, tf.stop_gradient(loc)[None], tf.stop_gradient(scale)[None])  # [S, B, M]
  normalized = tf.stop_gradient(tf.nn.softmax(log_weights, axis=0))  # [S, B, M]
  return tf.reduce_sum(tf.square(normalized) * (log_joint - log_q_fixed), axis=0)


def mixture_iw_bound(log_alpha, log_weights):
  """The stratified importance-weighted mixture bound (SIWAE; Morningstar et al. 2021): [B].

  L = logsumexp_{s,j}(log alpha_j + log w_sj) - log S, with w_sj = p(x, z_sj) / Q(z_sj|x)
  and z_sj ~ q_j: S samples from each component, weighted by alpha_j. E[exp L] = p(x),
  so L <= log p(x); L >= the stratified ELBO sum_j alpha_j mean_s log w_sj (Jensen); with
  one component and S samples it is the IWAE bound. Inactive components (log alpha_j
  = -1e9) contribute nothing.

  Args:
    log_alpha: [B, M]; log_weights: [S, B, M] log p(x, z_sj) - log Q(z_sj|x).
  """
  # One logsumexp over (s, j), minus log S (not a log-mean over s and j: the weights
  # alpha_j already sum to one). Not two stages: that rounds differently from the runs
  # in results/.
  num_samples = tf.cast(tf.shape(log_weights)[0], log_weights.dtype)
  return (tf.reduce_logsumexp(log_alpha[None] + log_weights, axis=[0, 2]) -
          tf.math.log(num_samples))


def gaussian_kl_to_standard_normal(loc, scale):
  """KL(N(loc, diag scale^2) || N(0, I)) in closed form, summed over the last axis."""
  return tf.reduce_sum(
      0.5 * (tf.square(loc) + tf.square(scale) - 1.0) - tf.math.log(scale), axis=-1)


def iwae_bound(log_weights):
  """log (1/K) sum_k exp(log_weights[k]): [K, B] -> [B]. With K = 1 it is the ELBO."""
  return tfp.math.reduce_logmeanexp(log_weights, axis=0)


def flow_terms(
    log_p_x_given_z_fn: Callable[[tf.Tensor], tf.Tensor],
    loc: tf.Tensor,
    scale: tf.Tensor,
    features: tf.Tensor,
    flow: Callable,
    noise: tf.Tensor,
) -> RMETerms:
  """ELBO of a flow posterior (iaf, hf; one component) from one batched decoder pass.

  z_0 = loc + scale * noise, z_T, log q_T(z_T|x) = flow(z_0; h) (rec_vae_tf.models.flows),
  ELBO = E[log p(x|z_T) + log p(z_T) - log q_T(z_T|x)].

  Args:
    log_p_x_given_z_fn: z [S, B, 1, D] -> log p(x|z) [S, B, 1] (the decoder).
    loc, scale: [B, 1, D] the encoder's Gaussian q_0.
    features: [B, 1, H] the encoder's features (the flow's context).
    flow: (z [S, B, D], context [B, H]) -> (z_T [S, B, D], log|det| [S, B]).
    noise: [S, B, 1, D] standard normal draws.
  Returns:
    RMETerms with M = 1: component_objective = component_elbo = mixture_elbo
    = the flow's ELBO; log_alpha = 0.
  """
  z0 = loc[None, :, 0] + scale[None, :, 0] * noise[:, :, 0]  # [S, B, D]
  log_q0 = posterior.diag_normal_log_prob(noise[:, :, 0], 0.0, 1.0) - tf.reduce_sum(
      tf.math.log(scale[:, 0]), axis=-1)[None]  # [S, B]
  z, log_det = flow(z0, features[:, 0])  # [S, B, D], [S, B]
  log_q = log_q0 - log_det  # [S, B]
  log_p_x_given_z = log_p_x_given_z_fn(z[:, :, None, :])[..., 0]  # [S, B]
  elbo = log_p_x_given_z + posterior.standard_normal_log_prob(z) - log_q  # [S, B]
  mean_elbo = tf.reduce_mean(elbo, axis=0)[:, None]  # [B, 1]
  return RMETerms(
      component_objective=mean_elbo,
      component_elbo=mean_elbo,
      mixture_elbo=mean_elbo[:, 0],
      log_alpha=tf.zeros_like(mean_elbo),
      log_p_x_given_z=tf.reduce_mean(log_p_x_given_z, axis=0)[:, None],
      iwae=iwae_bound(elbo)[:, None])
