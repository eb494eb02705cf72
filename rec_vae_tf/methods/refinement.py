"""Per-example refinement of a Gaussian posterior by gradient ascent (SA-VAE).

Semi-amortized inference (Kim et al., "Semi-Amortized Variational
Autoencoders", ICML 2018; the `savae` and `vae+svi` baselines of RME.md): the
encoder's q(z|x) = N(loc, diag(exp(log_scale)^2)) is only a starting point;
K steps of stochastic gradient ascent with momentum on each example's ELBO
refine it:

  ELBO(loc, log_scale; x) = (1/S) sum_s log p(x | loc + exp(log_scale) * e_s)
                            - KL(N(loc, exp(log_scale)^2) || N(0, I)),  e_s ~ N(0, I)
  v_{k+1}     = momentum * v_k + g_k,   g_k = d ELBO / d(loc, log_scale) at step k
                (optionally clipped to norm max_grad_norm per example)
  theta_{k+1} = theta_k + step_size * v_{k+1}

The KL to the standard-normal prior is in closed form; only the likelihood
term is sampled (S draws per step, fresh each step, stateless).

Gradients: with `stop_encoder_gradient=True` (vae+svi) the result is a
constant: nothing flows back to the encoder or the decoder. With False (SA-VAE
training) the K steps stay on the outer tape, so the encoder's outputs receive
gradients through every step (second order: each step's gradient is itself
differentiated). The refined parameters then also depend on the decoder's
parameters through the steps; SA-VAE's decoder update ignores that path, so
take the decoder's gradient at `tf.stop_gradient` of the result.

Cost: K decoder forward and backward passes over S x B samples, one after the
other; with K = 20 that is about 10x the floating-point work of RME(M = 4)'s
whole amortized pass (launch/benchmark.py measures the time).

Shapes: K steps, S samples, B batch, D latent size.
"""

from typing import Callable, NamedTuple, Optional

import tensorflow as tf

from rec_vae_tf.methods import objective


class RefinedPosterior(NamedTuple):
  loc: tf.Tensor    # [B, D]
  scale: tf.Tensor  # [B, D]


def gaussian_elbo(log_p_x_given_z_fn: Callable[[tf.Tensor], tf.Tensor],
                  loc: tf.Tensor, log_scale: tf.Tensor, noise: tf.Tensor) -> tf.Tensor:
  """Per-example Monte Carlo ELBO of N(loc, exp(log_scale)^2) with an analytic KL.

  Args:
    log_p_x_given_z_fn: z [S, B, D] -> log p(x|z) [S, B] (each example's own x).
    loc, log_scale: [B, D].
    noise: [S, B, D] standard normal draws.
  Returns:
    [B] ELBO estimates.
  """
  scale = tf.exp(log_scale)  # [B, D]
  z = loc[None] + scale[None] * noise  # [S, B, D]
  log_p_x_given_z = tf.reduce_mean(log_p_x_given_z_fn(z), axis=0)  # [B]
  return log_p_x_given_z - objective.gaussian_kl_to_standard_normal(loc, scale)


def _clip_per_example(grad, max_norm):
  """Scales each example's gradient [B, D] to norm <= max_norm."""
  norm = tf.norm(grad, axis=-1, keepdims=True)  # [B, 1]
  return grad * tf.minimum(1.0, max_norm / tf.maximum(norm, 1e-12))


def refine_gaussian(
    log_p_x_given_z_fn: Callable[[tf.Tensor], tf.Tensor],
    loc: tf.Tensor,
    log_scale: tf.Tensor,
    *,
    num_steps: int,
    step_size: float,
    momentum: float = 0.5,
    num_samples: int = 1,
    seed: Optional[tf.Tensor] = None,
    noise: Optional[tf.Tensor] = None,
    max_grad_norm: Optional[float] = None,
    stop_encoder_gradient: bool = True,
) -> RefinedPosterior:
  """Refines a diagonal Gaussian posterior per example by K gradient-ascent steps.

  Args:
    log_p_x_given_z_fn: z [S, B, D] -> log p(x|z) [S, B]. For
      `networks.BernoulliDecoder`: `lambda z: decoder.log_prob(x, z[..., None, :])[..., 0]`.
    loc, log_scale: [B, D] the starting point (the encoder's output).
    num_steps: K, a Python int >= 0 (the loop is unrolled). 0 returns
      (loc, exp(log_scale)) unchanged.
    step_size: learning rate of the ascent.
    momentum: heavy-ball momentum in [0, 1).
    num_samples: S, Monte Carlo samples of the likelihood term per step.
    seed: stateless seed, shape [2]; step k draws with fold_in(seed, k).
      Exactly one of `seed` and `noise` must be given.
    noise: [K, S, B, D] standard normal draws, to draw them outside an XLA
      cluster (XLA's CPU random numbers are slow when fused; README,
      "Performance").
    max_grad_norm: if set, each example's gradient (loc and log_scale
      together) is clipped to this norm, as in SA-VAE.
    stop_encoder_gradient: True: the result is a constant (vae+svi). False: the
      steps stay differentiable w.r.t. loc and log_scale (SA-VAE, second order).
  Returns:
    RefinedPosterior(loc [B, D], scale [B, D]).
  Raises:
    ValueError: bad num_steps, or not exactly one of seed and noise.
  """
  if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
    raise ValueError(f'num_steps={num_steps!r}; allowed: a Python int >= 0')
  if num_steps and (seed is None) == (noise is None):
    raise ValueError('give exactly one of seed and noise')
  if stop_encoder_gradient:
    loc, log_scale = tf.stop_gradient(loc), tf.stop_gradient(log_scale)
  latent_dim = loc.shape[-1]
  velocity_loc = tf.zeros_like(loc)
  velocity_log_scale = tf.zeros_like(log_scale)
  for k in range(num_steps):
    if noise is not None:
      eps = noise[k]  # [S, B, D]
    else:
      eps = tf.random.stateless_normal(
          [num_samples, tf.shape(loc)[0], latent_dim],
          seed=tf.random.experimental.stateless_fold_in(seed, k))  # [S, B, D]
    with tf.GradientTape() as tape:
      tape.watch([loc, log_scale])
      # Examples are independent: the gradient of the sum is each example's own.
      elbo = tf.reduce_sum(gaussian_elbo(log_p_x_given_z_fn, loc, log_scale, eps))
    grad_loc, grad_log_scale = tape.gradient(elbo, [loc, log_scale])  # [B, D] each
    if max_grad_norm is not None:
      both = _clip_per_example(tf.concat([grad_loc, grad_log_scale], -1), max_grad_norm)
      grad_loc, grad_log_scale = both[:, :latent_dim], both[:, latent_dim:]
    velocity_loc = momentum * velocity_loc + grad_loc
    velocity_log_scale = momentum * velocity_log_scale + grad_log_scale
    loc = loc + step_size * velocity_loc
    log_scale = log_scale + step_size * velocity_log_scale
  scale = tf.exp(log_scale)
  if stop_encoder_gradient:
    loc, scale = tf.stop_gradient(loc), tf.stop_gradient(scale)
  return RefinedPosterior(loc, scale)
