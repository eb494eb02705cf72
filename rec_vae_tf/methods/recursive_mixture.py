"""The Gaussian-mixture family: rme, vae, boosted, mixture, iwae (RME.md, "The four updates").

One forward pass (M encoders, one decoder pass over all S x B x M samples)
gives every term (`objective.rme_terms`); the methods differ in which loss
trains which variables:

  rme      components phi_m on J_m (ELBO + lambda KL to the floored predecessor
           mixture), decoder and mixing weights on the stratified mixture ELBO;
  vae      the same with M = 1 (J_1 is the ELBO);
  boosted  J_m with boosted VI's entropy-regularised RELBO in place of the KL;
  mixture  encoders, weights and decoder all on the joint mixture ELBO
           (the non-recursive baseline; schedule simultaneous);
  iwae     one encoder, encoder and decoder on the k-sample IWAE bound (with
           cfg.dreg, the encoder's gradient by DReG).

With cfg.mixture_bound = 'iw' the decoder and the weights (and, for mixture,
the encoders) are trained on the importance-weighted mixture bound instead of
the stratified ELBO: `mixture` is then SIWAE (Morningstar et al. 2021) and
`rme` RME with an importance-weighted decoder bound; cfg.bound_to_encoders adds
that bound's gradient to the encoders' J_m.
"""

import tensorflow as tf

from rec_vae_tf.methods import base
from rec_vae_tf.methods import objective


class RecursiveMixture(base.Method):
  """rme (and vae, its M = 1 case)."""

  component_objective = 'kl'
  # False: the mixture bound sees the components' parameters stopped (RME); True:
  # the encoders are trained by the mixture bound itself.
  joint = False

  def gradients(self, x, num_active, frozen, noise, batch_mean):
    cfg = self.cfg
    with tf.GradientTape(persistent=True) as tape:
      enc = self.encoder(x)
      # Frozen components' weights stay put (freeze_earlier); others train.
      eps_logit = tf.where(frozen, tf.stop_gradient(enc.eps_logit), enc.eps_logit)
      terms = objective.rme_terms(
          self.log_p_x_given_z_fn(x), enc.loc, enc.scale, eps_logit, noise['z'],
          num_active, cfg.kl_weight, cfg.prior_floor,
          component_objective=self.component_objective,
          joint=self.joint or cfg.bound_to_encoders,
          importance_weighted=cfg.mixture_bound == 'iw', dreg=cfg.dreg)
      trained = tf.cast(tf.logical_not(frozen), x.dtype)  # [M]
      component_loss, mixture_loss = self.losses(terms, trained, batch_mean)
    grads = (tape.gradient(component_loss, self.component_variables) +
             tape.gradient(mixture_loss, self.mixture_variables))
    del tape
    return grads, terms

  def mixture_bound(self, terms):
    """[B] the bound the decoder and weights are trained on (cfg.mixture_bound)."""
    return terms.mixture_iw if self.cfg.mixture_bound == 'iw' else terms.mixture_elbo

  def losses(self, terms, trained, batch_mean):
    """(loss of the component variables, loss of the decoder and weights)."""
    component_loss = -batch_mean(tf.reduce_sum(terms.component_objective * trained, -1))
    mixture_loss = -batch_mean(self.mixture_bound(terms))
    if self.cfg.bound_to_encoders:  # the bound's gradient reaches the encoders too
      component_loss += mixture_loss
    return component_loss, mixture_loss


class Boosted(RecursiveMixture):
  """boosted: RME's recursion with the RELBO (entropy weight 1/sqrt(m)) in place of the KL."""
  component_objective = 'entropy'


class JointMixture(RecursiveMixture):
  """mixture: encoders, weights and decoder all on the mixture bound."""
  joint = True

  def losses(self, terms, trained, batch_mean):
    mixture_loss = -batch_mean(self.mixture_bound(terms))
    return mixture_loss, mixture_loss


class ImportanceWeighted(RecursiveMixture):
  """iwae: one encoder; encoder and decoder both on the k-sample IWAE bound (k = S)."""

  def losses(self, terms, trained, batch_mean):
    loss = -batch_mean(terms.iwae[:, 0])
    if self.cfg.dreg:  # the encoder's gradient by DReG, the decoder's by the bound itself
      return -batch_mean(terms.iwae_dreg[:, 0]), loss
    return loss, loss
