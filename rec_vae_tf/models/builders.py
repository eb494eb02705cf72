"""What a Config selects: the dataset loader and the networks, in one place.

`Config.dataset` names a dataset of `rec_vae_tf.datasets` and `Config.network`
a network size; this module turns them into the two factories the trainer
takes (`loop.train(load_data=..., make_networks=...)`), which use these when
the caller passes none:

  dataset -> load_data(data_dir, train_examples=None) -> data.Splits
             (`datasets.load_dataset`; for mnist that is `data.load_mnist`)
  network -> make_networks(num_components, hidden_units, latent_dim, eps_mode,
             seed, num_pixels=..., ...) -> (encoder, decoder)
               small, large:           `networks.build_networks` (dense MLPs,
                                       Bernoulli decoder; binary datasets only)
               conv_small, conv_large: `conv_networks.make_conv_networks` for
                                       the dataset's image shape and likelihood
                                       (Bernoulli for binary images, a
                                       discretized logistic on 0..255 for colour)

Every combination a validated Config allows builds (Config.validate refuses
dense networks on colour data).
"""

from typing import Callable, Optional

from rec_vae_tf import config as config_lib
from rec_vae_tf.models import conv_networks
from rec_vae_tf.data import catalog
from rec_vae_tf.data import sources
from rec_vae_tf.models import networks


def spec(cfg: config_lib.Config) -> catalog.DatasetSpec:
  """The `datasets.DatasetSpec` of cfg.dataset (image shape, likelihood, files...)."""
  return catalog.SPECS[cfg.dataset]


def num_pixels(cfg: config_lib.Config) -> int:
  """P = H * W * C, the width of one flattened image of cfg.dataset."""
  return spec(cfg).num_pixels


def is_colour(cfg: config_lib.Config) -> bool:
  """True for datasets modelled with the discretized logistic (values 0..255, bits/dim)."""
  return spec(cfg).likelihood != 'bernoulli'


def load_data_fn(cfg: config_lib.Config, *,
                 validation_examples: Optional[int] = None,
                 log: Optional[Callable[[str], None]] = None) -> Callable:
  """load_data(data_dir, train_examples=None) -> data.Splits for cfg.dataset.

  Args:
    cfg: the run's config.
    validation_examples: for datasets whose validation split is carved from
      the training images, how many to carve (None: the dataset's convention,
      e.g. 10000 for fashion_mnist); tests pass a few for tiny fixtures.
    log: the caller's progress lines (what was loaded, warnings); None: silent.
  """
  def load_data(data_dir, train_examples=None):
    return sources.load_dataset(cfg.dataset, data_dir, train_examples,
                                validation_examples=validation_examples, log=log)
  return load_data


def make_networks_fn(cfg: config_lib.Config) -> Callable:
  """The `make_networks` factory of cfg.network for cfg.dataset's images."""
  if cfg.network in config_lib.CONV_NETWORKS:
    dataset = spec(cfg)
    return conv_networks.make_conv_networks(cfg.network, dataset.image_shape,
                                            dataset.likelihood)
  return networks.build_networks
