"""The interface every inference method implements (rec_vae_tf.methods).

A `Method` is bound to one run's networks (`encoder` with M components,
`decoder`) and owns what differs between methods:

  * parts and variable groups: `modules` (extra posterior networks, e.g. a
    flow; checkpointed with the networks), `component_variables` (trained by
    the component objectives), `mixture_variables` (decoder and mixing
    weights);
  * training: `step_noise` (the step's random draws, a pure function of a
    seed) and `gradients` (each loss w.r.t. the variables it trains);
  * test time: `posterior` (one pass: weights, Gaussians, flow context),
    `transform` (None, or the flow every posterior sample is pushed through),
    `elbo_terms`, `infer` (the timed inference pass), `sample`, and
    `encode_outputs` (what the SavedModel's encode signature returns).

The defaults here are the recursive mixture's (RME.md): the Gaussian mixture
Q(z|x) = sum_j alpha_j(x) q_j(z|x) of the active components.

Shapes: S samples, B batch, M components, D latent size, H features.
"""

from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import tensorflow as tf

from rec_vae_tf.methods import objective
from rec_vae_tf.models import networks
from rec_vae_tf.models import posterior as posterior_lib


class Posterior(NamedTuple):
  """The test-time posterior of a batch (one feed-forward pass, plus refinement)."""
  log_alpha: tf.Tensor       # [B, M] mixture log weights (inactive: very negative)
  loc: tf.Tensor             # [B, M, D]
  scale: tf.Tensor           # [B, M, D]
  eps_logit: tf.Tensor       # [B, M] the recursive weights' logits
  context: Optional[tf.Tensor] = None  # [B, H] a flow's context; None without a flow


class Method:
  """A method bound to a run's networks; subclasses override what differs."""

  # None, or (z [..., B, D], context [B, H]) -> (z_T, log|det| [..., B]): every
  # posterior sample is pushed through it (flows).
  transform: Optional[Callable] = None
  # Whether a row's posterior depends on the other rows of its batch (refinement
  # noise is drawn per batch): a sharded evaluation then encodes whole batches.
  batch_coupled_posterior = False
  # What the exported model serves as its posterior (export_summary.json).
  served_posterior = 'the amortized Gaussian mixture Q(z|x) of the active components'

  def __init__(self, cfg, encoder, decoder, *, num_pixels: int):
    del num_pixels  # used by methods that build extra parts from the input size
    self.cfg = cfg
    self.encoder = encoder
    self.decoder = decoder

  @property
  def name(self) -> str:
    return self.cfg.method

  # ------------------------------------------------- parts and variable groups
  @property
  def modules(self) -> Dict[str, tf.Module]:
    """Extra posterior parts by checkpoint key (none here)."""
    return {}

  @property
  def component_variables(self) -> List[tf.Variable]:
    extra = [v for m in self.modules.values() for v in m.trainable_variables]
    return self.encoder.component_variables + extra

  @property
  def mixture_variables(self) -> List[tf.Variable]:
    return self.decoder.trainable_variables + self.encoder.weight_variables

  @property
  def sliced_variables(self) -> List[tf.Variable]:
    """Variables with one slice per component (leading axis M), frozen under freeze_earlier."""
    return self.encoder.component_variables + self.encoder.weight_variables

  def num_parameters(self, encoder_only: bool = False) -> int:
    """Trainable parameters of the posterior (encoders, extra parts) and, unless encoder_only, the decoder."""
    layers = [self.encoder, *self.modules.values()]
    return networks.count_parameters(*layers, *([] if encoder_only else [self.decoder]))

  # ------------------------------------------------------------------ training
  # The batch axis of each noise tensor (a replica keeps its rows of each).
  noise_batch_axes = {'z': 1}

  def step_noise(self, seed, batch_size) -> Dict[str, tf.Tensor]:
    """The step's standard normal draws: {'z': [S, B, M, D]}; seed [2] int64."""
    cfg = self.cfg
    return {'z': tf.random.stateless_normal(
        [cfg.num_train_samples, batch_size, cfg.num_components, cfg.latent_dim], seed=seed)}

  def log_p_x_given_z_fn(self, x):
    return lambda z: self.decoder.log_prob(x, z)  # [S, B, M]

  def gradients(self, x, num_active, frozen, noise: Dict[str, tf.Tensor],
                batch_mean: Callable) -> Tuple[list, objective.RMETerms]:
    """One step's gradients and terms.

    Args:
      x: [B, P] images; num_active: int32 scalar; frozen: [M] bool (freeze_earlier);
      noise: `step_noise`'s draws (this replica's rows under a strategy);
      batch_mean: per-example values [B, ...] -> the global batch mean.
    Returns:
      (gradients aligned with component_variables + mixture_variables, None
      where a loss does not reach a variable; objective.RMETerms).
    """
    raise NotImplementedError

  # ----------------------------------------------------------------- test time
  def posterior(self, x, num_active) -> Posterior:
    enc = self.encoder(x)
    log_alpha = posterior_lib.recursive_log_weights(enc.eps_logit, num_active)  # [B, M]
    return Posterior(log_alpha, enc.loc, enc.scale, enc.eps_logit)

  def elbo_terms(self, x, num_active, noise, post: Posterior) -> objective.RMETerms:
    """The stratified ELBO terms of batch x at `post` (noise [S, B, M, D])."""
    return objective.rme_terms(
        self.log_p_x_given_z_fn(x), post.loc, post.scale, post.eps_logit, noise,
        num_active, kl_weight=0.0, prior_floor=0.0)

  def infer(self, x, num_active) -> Tuple[tf.Tensor, ...]:
    """The timed inference pass: everything the posterior needs before sampling.

    All of it is returned, so no part (e.g. refinement steps) can be pruned away.
    """
    post = self.posterior(x, num_active)
    return post.log_alpha, post.loc, post.scale

  def sample(self, post: Posterior, seed) -> tf.Tensor:
    """One z ~ Q(z|x) per row: [B, D] (pushed through `transform` where there is one)."""
    z = posterior_lib.q_z_given_x(post.log_alpha, post.loc, post.scale).sample(seed=seed)
    if self.transform is not None:
      z, _ = self.transform(z, post.context)
    return z

  def encode_outputs(self, post: Posterior) -> Dict[str, tf.Tensor]:
    """The SavedModel's encode signature: the posterior's parameters."""
    return {'log_weights': post.log_alpha, 'loc': post.loc, 'scale': post.scale}
