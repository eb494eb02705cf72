"""Semi-amortized posteriors: savae and vae_svi (one encoder; rec_vae_tf.methods.refinement).

The encoder's Gaussian is refined per example by K = refine_steps momentum
steps of gradient ascent on the example's ELBO over (loc, log scale), each
example's gradient clipped to REFINE_MAX_GRAD_NORM, in training and at test
time (importance-sampling proposal, ELBO, timed pass and the exported model):

  savae    the decoder is trained on ELBO(q_K) at the refined, stopped
           (loc_K, scale_K); the encoder on the same ELBO(q_K) through the K
           steps (second order), by back-propagating d ELBO / d(loc_K, scale_K)
           through them, as SA-VAE (Kim et al. 2018) does;
  vae_svi  the encoder on its own ELBO(q_0) (a plain VAE), the decoder on
           ELBO(q_K) at the stopped refined posterior.
"""

import tensorflow as tf

from rec_vae_tf.methods import base
from rec_vae_tf.methods import objective
from rec_vae_tf.methods import refinement

# Per-example clipping of the refinement gradient (loc and log scale together),
# as SA-VAE clips its inner gradients (to 5).
REFINE_MAX_GRAD_NORM = 5.0
# Seed salt of the refinement noise at test time (fixed: the same image gets the
# same refined posterior in every evaluation and export of a run).
EVAL_REFINE_SEED = 7717


class SemiAmortized(base.Method):
  """savae: the encoder trained through the refinement steps (second order)."""

  second_order = True
  batch_coupled_posterior = True
  served_posterior = ('the encoder\'s Gaussian refined in the graph by the run\'s refine_steps '
                      'gradient steps on each image\'s ELBO (fixed seed)')
  noise_batch_axes = {'z': 1, 'refine': 2}

  def refine(self, x, loc, scale, *, noise=None, seed=None, second_order=False):
    """(loc, scale) [B, 1, D] after the K refinement steps on x's ELBO under the current decoder.

    noise: [K, S, B, D] draws, or a stateless seed [2]; neither: the fixed test-time
    seed. second_order=False returns constants; True keeps the steps
    differentiable w.r.t. loc and scale. With K = 0 the input is returned.
    """
    cfg = self.cfg
    if cfg.refine_steps == 0:
      return loc, scale
    if noise is None and seed is None:
      seed = tf.constant([cfg.seed, EVAL_REFINE_SEED], tf.int64)
    log_p_x_given_z_fn = lambda z: self.decoder.log_prob(x, z[..., None, :])[..., 0]  # [S, B]
    out = refinement.refine_gaussian(
        log_p_x_given_z_fn, loc[:, 0], tf.math.log(scale[:, 0]),  # [B, D] each
        num_steps=cfg.refine_steps, step_size=cfg.refine_step_size,
        momentum=cfg.refine_momentum, num_samples=cfg.num_train_samples, seed=seed,
        noise=noise, max_grad_norm=REFINE_MAX_GRAD_NORM,
        stop_encoder_gradient=not second_order)
    return out.loc[:, None], out.scale[:, None]  # [B, 1, D] each

  def step_noise(self, seed, batch_size):
    """{'z': [S, B, 1, D], 'refine': [K, S, B, D]} (no 'refine' when K = 0).

    The refinement draws are independent of z's: seed folded in with 1.
    """
    cfg = self.cfg
    noise = super().step_noise(seed, batch_size)
    if cfg.refine_steps:
      noise['refine'] = tf.random.stateless_normal(
          [cfg.refine_steps, cfg.num_train_samples, batch_size, cfg.latent_dim],
          seed=tf.random.experimental.stateless_fold_in(seed, 1))
    return noise

  def gradients(self, x, num_active, frozen, noise, batch_mean):
    del frozen  # one component
    cfg = self.cfg
    log_p_fn = self.log_p_x_given_z_fn(x)
    with tf.GradientTape(persistent=True) as tape:
      enc = self.encoder(x)
      loc_k, scale_k = self.refine(x, enc.loc, enc.scale, noise=noise.get('refine'),
                                   second_order=self.second_order)  # [B, 1, D] each
      # ELBO(q_K) at the refined parameters as constants: the decoder's gradient
      # (SA-VAE's decoder update ignores the steps' dependence on the decoder).
      loc_k_stopped, scale_k_stopped = tf.stop_gradient(loc_k), tf.stop_gradient(scale_k)
      tape.watch([loc_k_stopped, scale_k_stopped])
      terms = objective.rme_terms(
          log_p_fn, loc_k_stopped, scale_k_stopped, enc.eps_logit, noise['z'], num_active,
          cfg.kl_weight, cfg.prior_floor)
      mixture_loss = -batch_mean(terms.mixture_elbo)  # M = 1: ELBO(q_K)
      encoder_loss = self.encoder_loss(log_p_fn, enc, terms, noise, num_active, batch_mean)
    encoder_grads = self.encoder_gradients(tape, encoder_loss, (loc_k, scale_k),
                                           (loc_k_stopped, scale_k_stopped))
    grads = encoder_grads + tape.gradient(mixture_loss, self.mixture_variables)
    del tape
    return grads, terms

  def encoder_loss(self, log_p_fn, enc, terms, noise, num_active, batch_mean):
    del log_p_fn, enc, noise, num_active
    return -batch_mean(terms.component_objective[:, 0])  # ELBO(q_K)

  def encoder_gradients(self, tape, encoder_loss, refined, stopped):
    # d ELBO(q_K) / d(loc_K, scale_K), carried back through the K steps to the
    # encoder (second order; with K = 0 this is the VAE's gradient).
    grad_loc, grad_scale = tape.gradient(encoder_loss, list(stopped))
    return tape.gradient(list(refined), self.component_variables,
                         output_gradients=[grad_loc, grad_scale])

  def posterior(self, x, num_active):
    post = super().posterior(x, num_active)
    loc, scale = self.refine(x, post.loc, post.scale)  # [B, 1, D] each
    return post._replace(loc=loc, scale=scale)


class SVIDecoder(SemiAmortized):
  """vae_svi: a plain VAE encoder; the decoder trained at the refined posterior."""

  second_order = False

  def encoder_loss(self, log_p_fn, enc, terms, noise, num_active, batch_mean):
    del terms
    cfg = self.cfg
    terms_0 = objective.rme_terms(log_p_fn, enc.loc, enc.scale, enc.eps_logit, noise['z'],
                                  num_active, cfg.kl_weight, cfg.prior_floor)
    return -batch_mean(terms_0.component_objective[:, 0])  # ELBO(q_0)

  def encoder_gradients(self, tape, encoder_loss, refined, stopped):
    del refined, stopped
    return tape.gradient(encoder_loss, self.component_variables)
