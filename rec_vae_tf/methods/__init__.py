"""The inference methods: one object per method family behind one interface.

Every method is a subclass of `base.Method` (methods/base.py) bound to a run's
networks. It owns what differs between methods: the extra posterior parts it
builds (a flow), its variable groups, the per-step losses and the variables
each one trains, the test-time posterior (z samples and log q(z|x) for
importance sampling, the ELBO, the timed inference pass) and what its
SavedModel's `encode` signature returns. The trainer, the evaluator, export,
the main job and the grid call that interface and never branch on a method
name.

This module is the registry. It loads without TensorFlow (config.py validates
flags with it before TensorFlow is imported); `build` imports the method's
module.

Adding a method: write `methods/<family>.py` with a `base.Method` subclass and
add one line to SPECS below.
"""

import dataclasses
import importlib
from typing import Optional, Tuple


@dataclasses.dataclass(frozen=True)
class Spec:
  """What config validation and the comparison grid need to know of a method, without TF."""
  impl: str                        # '<module of this package>:<class>'
  single_encoder: bool = False     # one encoder: num_components must be 1
  schedule: Optional[str] = None   # the only schedule the method allows (None: any)
  # Comparisons give it the mixture methods' sample budget: M samples per step, one
  # decoder pass each (iwae's k = M).
  takes_component_samples: bool = False
  # Optional Config fields the method accepts beyond their defaults (mixture_bound,
  # bound_to_encoders, dreg).
  options: Tuple[str, ...] = ()


SPECS = {
    'rme': Spec('recursive_mixture:RecursiveMixture',
                options=('mixture_bound', 'bound_to_encoders')),
    'vae': Spec('recursive_mixture:RecursiveMixture', single_encoder=True,
                options=('mixture_bound',)),
    'boosted': Spec('recursive_mixture:Boosted', options=('mixture_bound', 'bound_to_encoders')),
    'mixture': Spec('recursive_mixture:JointMixture', schedule='simultaneous',
                    options=('mixture_bound',)),
    'iwae': Spec('recursive_mixture:ImportanceWeighted', single_encoder=True,
                 takes_component_samples=True, options=('dreg',)),
    'savae': Spec('semi_amortized:SemiAmortized', single_encoder=True),
    'vae_svi': Spec('semi_amortized:SVIDecoder', single_encoder=True),
    'iaf': Spec('flow:FlowPosterior', single_encoder=True),
    'hf': Spec('flow:FlowPosterior', single_encoder=True),
}


def method_class(name: str):
  """The `base.Method` subclass registered for `name`."""
  module, cls = SPECS[name].impl.split(':')
  return getattr(importlib.import_module(f'{__name__}.{module}'), cls)


def build(cfg, encoder, decoder, *, num_pixels: int):
  """The method of cfg.method bound to (encoder, decoder); builds its extra parts (a flow)."""
  return method_class(cfg.method)(cfg, encoder, decoder, num_pixels=num_pixels)


def for_networks(encoder, decoder, method: str = 'rme', **config_fields):
  """`method` bound to networks made outside a run (tests, benchmarks), with a default config.

  The config takes M and D from the encoder; config_fields override the rest.
  """
  from rec_vae_tf import config as config_lib  # pylint: disable=g-import-not-at-top
  fields = dict(config_lib.method_defaults(method, int(encoder.num_components)),
                latent_dim=int(encoder.latent_dim), **config_fields)
  cfg = config_lib.Config().replace(**fields)
  return build(cfg, encoder, decoder, num_pixels=int(decoder.num_pixels))
