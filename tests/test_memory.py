"""The memory estimate (rec_vae_tf/training/memory.py): its parameter counts and its refusal."""
import pytest

from rec_vae_tf import config as config_lib
from rec_vae_tf.models import builders
from rec_vae_tf.models import networks
from rec_vae_tf.training import memory


@pytest.mark.parametrize('changes', [
    {'method': 'rme', 'num_components': 3, 'latent_dim': 5},
    {'method': 'vae', 'num_components': 1, 'latent_dim': 4, 'encoder_hidden_units': 37},
    {'method': 'mixture', 'num_components': 2, 'latent_dim': 3, 'eps_mode': 'global',
     'schedule': 'simultaneous', 'network': 'large'},
])
def test_dense_parameter_count_is_the_networks(changes):
  cfg = config_lib.Config(**changes).validate()
  enc_hidden = ((cfg.encoder_hidden_units,) * len(cfg.hidden_units)
                if cfg.encoder_hidden_units else None)
  encoder, decoder = networks.build_networks(
      cfg.num_components, cfg.hidden_units, cfg.latent_dim, cfg.eps_mode, 0,
      encoder_hidden_units=enc_hidden)
  assert memory.estimate(cfg).parameters == networks.count_parameters(encoder, decoder)


@pytest.mark.parametrize('dataset,network', [('mnist', 'conv_small'), ('svhn', 'conv_large')])
def test_conv_parameter_count_within_one_percent(dataset, network):
  cfg = config_lib.Config(dataset=dataset, network=network, num_components=2,
                          binarization=config_lib.default_binarization(dataset)).validate()
  spec = builders.spec(cfg)
  encoder, decoder = builders.make_networks_fn(cfg)(
      cfg.num_components, cfg.hidden_units, cfg.latent_dim, cfg.eps_mode, 0,
      num_pixels=spec.num_pixels)
  want = networks.count_parameters(encoder, decoder)
  assert abs(memory.estimate(cfg).parameters - want) / want < 0.01


def test_refuses_beyond_the_limit_in_one_line_naming_estimate_and_limit():
  cfg = config_lib.Config(latent_dim=100_000_000).validate()
  est = memory.estimate(cfg)
  # Two [200, 1e8] heads per encoder, 4 encoders, and the decoder's [1e8, 200] kernel.
  assert est.parameters > 9 * 200 * 100_000_000
  assert est.total > est.state >= 4 * 4 * est.parameters
  with pytest.raises(memory.OutOfMemory) as e:
    memory.check(cfg, limit=64 * 10**9)
  message = str(e.value)
  assert '\n' not in message
  assert message.startswith(f'the config needs about {est.total / 1e9:.1f} GB of memory')
  assert "more than this machine's 64.0 GB" in message and 'latent_dim=100000000' in message
  # The default config fits in a gigabyte, and memory.check passes it on this machine.
  small = memory.check(config_lib.Config())
  assert 0 < small.total < 1e9


def test_refinement_and_eval_chunk_scale_the_estimate():
  base = config_lib.Config(method='savae', num_components=1, schedule='simultaneous')
  step = memory.estimate(base.replace(refine_steps=0)).step
  assert memory.estimate(base).step == pytest.approx(step * (base.refine_steps + 1))
  chunk = memory.estimate(base).eval_chunk
  assert memory.estimate(base.replace(eval_chunk=base.eval_chunk * 2)).eval_chunk == (
      pytest.approx(2 * chunk))
