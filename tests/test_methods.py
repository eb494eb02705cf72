"""The method interface: the registry, and every method's export serving its own posterior.

For each registered method a tiny run is trained, exported, loaded through the
TF1 session loader (TF Serving's path) and its log_likelihood signature
compared with the estimate `launch/evaluate.py` computes (`likelihood.evaluate`)
for the same images, K, chunk and seed: the served model is the trained one.
"""
import numpy as np
import pytest
import tensorflow as tf

from rec_vae_tf import config as config_lib
from rec_vae_tf import methods
from rec_vae_tf.data import pipeline as data_lib
from rec_vae_tf.data import sources as data_sources
from rec_vae_tf.evaluation import likelihood
from rec_vae_tf.methods import base
from rec_vae_tf.models import networks
from rec_vae_tf.serving import export as export_lib
from rec_vae_tf.training import loop as loop_lib

P = 12
K, CHUNK = 7, 3  # two full chunks and a remainder
N_TEST = 5


def _load_data(data_dir, train_examples=None):
  del data_dir, train_examples
  images = (np.random.default_rng(0).random([24, P]) * 255).astype(np.uint8)
  return data_sources.Splits(train=images[:12], valid=images[12:19], test=images[19:])


def _tiny_networks(num_components, hidden_units, latent_dim, eps_mode, seed, num_pixels):
  del hidden_units
  return networks.build_networks(num_components, (6,), latent_dim, eps_mode, seed, num_pixels)


def _cfg(method):
  fields = config_lib.method_defaults(method, 2)
  return config_lib.Config(**fields, latent_dim=3, epochs=2, epochs_per_component=1.0,
                           batch_size=4, eval_batch_size=N_TEST, eval_chunk=CHUNK,
                           learning_rate=1e-2, xla=False, refine_steps=2, flow_steps=2,
                           flow_hidden_units=5).validate()


def test_every_config_method_is_registered_with_an_interface_class():
  assert set(config_lib.METHODS) == set(methods.SPECS)
  for name in methods.SPECS:
    cls = methods.method_class(name)
    assert issubclass(cls, base.Method), name
    assert cls.gradients is not base.Method.gradients, f'{name} has no losses'


@pytest.mark.parametrize('method', sorted(methods.SPECS))
def test_the_export_serves_the_trained_posterior(method, tmp_path):
  cfg = _cfg(method)
  result = loop_lib.train(cfg, str(tmp_path / 'run'), load_data=_load_data,
                          make_networks=_tiny_networks, log=lambda s: None)
  tr = result.trainer
  dataset = data_lib.make_eval_dataset(result.splits.test, batch_size=N_TEST, seed=0,
                                       binarization=cfg.binarization)
  images = next(iter(dataset)).numpy()
  # What launch/evaluate.py computes (eval seed 0: the one batch's chunk seeds are [0, i]).
  evaluated = likelihood.evaluate(tr.method, dataset, tr.num_active.numpy(), num_samples=K,
                                  chunk=CHUNK, seed=0, xla=False)
  module = export_lib.InferenceModule(tr.method, int(tr.num_active.numpy()), num_pixels=P,
                                      seed=0, num_importance_samples=K, chunk=CHUNK)
  path = export_lib.export_saved_model(module, str(tmp_path / 'export' / method))
  summary = export_lib.read_summary(path)
  assert summary['method'] == method
  assert summary['served_posterior'] == tr.method.served_posterior
  with export_lib.SessionModel(path) as model:
    served = model.run('log_likelihood', {'images': images})['log_likelihood']
    encoded = model.run('encode', {'images': images})
  np.testing.assert_allclose(served.astype(np.float64).mean(), evaluated['test_log_likelihood'],
                             rtol=1e-5, atol=1e-4)
  # encode returns the method's own posterior: refined (savae, vae_svi), with the flow's
  # context (iaf, hf), the encoder's mixture otherwise.
  post = tr.method.posterior(tf.constant(images), tr.num_active)
  np.testing.assert_allclose(encoded['loc'], post.loc.numpy(), rtol=1e-4, atol=1e-5)
  raw_loc = tr.encoder(tf.constant(images)).loc.numpy()
  refined = hasattr(tr.method, 'refine')
  assert (np.abs(encoded['loc'] - raw_loc).max() > 1e-4) == refined
  assert ('context' in encoded) == (tr.method.transform is not None)
  if tr.method.transform is not None:
    np.testing.assert_allclose(encoded['context'], post.context.numpy(), rtol=1e-4, atol=1e-5)
