"""Flow posteriors: iaf and hf (one encoder; rec_vae_tf.models.flows).

q_T(z_T|x): z_0 ~ N(loc(x), scale(x)^2) pushed through flow_steps conditional
bijectors (inverse autoregressive steps, or Householder reflections) whose
context is the encoder's last hidden layer h(x);
log q_T(z_T|x) = log q_0(z_0|x) - log|det dz_T/dz_0|. Encoder, flow and
decoder are trained together on the flow posterior's ELBO; every importance
sample and reconstruction is pushed through the flow.
"""

import tensorflow as tf

from rec_vae_tf.methods import base
from rec_vae_tf.methods import objective
from rec_vae_tf.models import flows
from rec_vae_tf.models import posterior as posterior_lib


class FlowPosterior(base.Method):
  """iaf / hf: the encoder's Gaussian pushed through a conditional flow."""

  served_posterior = ('the encoder\'s Gaussian q_0(z|x) (encode: its loc, scale and the flow '
                      'context) pushed through the flow')

  def __init__(self, cfg, encoder, decoder, *, num_pixels):
    super().__init__(cfg, encoder, decoder, num_pixels=num_pixels)
    features = encoder(tf.zeros([1, num_pixels])).features  # [1, 1, H]
    self.flow = flows.build_flow(cfg.method, cfg.flow_steps, cfg.latent_dim,
                                 context_dim=int(features.shape[-1]),
                                 hidden_units=cfg.flow_hidden_units, seed=cfg.seed + 2000)

  @property
  def modules(self):
    return {'flow': self.flow}

  def transform(self, z, context):  # pylint: disable=method-hidden
    return self.flow(z, context)

  def gradients(self, x, num_active, frozen, noise, batch_mean):
    del num_active, frozen  # one component
    with tf.GradientTape() as tape:
      enc = self.encoder(x)
      terms = objective.flow_terms(self.log_p_x_given_z_fn(x), enc.loc, enc.scale,
                                   enc.features, self.flow, noise['z'])
      loss = -batch_mean(terms.mixture_elbo)
    return tape.gradient(loss, self.component_variables + self.mixture_variables), terms

  def posterior(self, x, num_active):
    enc = self.encoder(x)
    log_alpha = posterior_lib.recursive_log_weights(enc.eps_logit, num_active)  # [B, 1]
    # One component: the context is its features [B, H].
    return base.Posterior(log_alpha, enc.loc, enc.scale, enc.eps_logit, enc.features[:, 0])

  def elbo_terms(self, x, num_active, noise, post):
    del num_active
    return objective.flow_terms(self.log_p_x_given_z_fn(x), post.loc, post.scale,
                                post.context[:, None], self.flow, noise)

  def infer(self, x, num_active):
    # The posterior and one flow pass (the cost of one flow sample per example).
    post = self.posterior(x, num_active)
    z, _ = self.flow(post.loc[:, 0], post.context)  # [B, D]
    return post.log_alpha, z

  def encode_outputs(self, post):
    return {**super().encode_outputs(post), 'context': post.context}
