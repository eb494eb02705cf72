"""The memory a config needs, estimated before TensorFlow allocates anything.

Launchers call `check(cfg)` before TensorFlow loads, so that a config the
machine cannot hold (`--latent_dim=100000000` asks for a [784, 2e8] kernel per
encoder) is refused with one line that gives the estimate and the limit,
instead of a `ResourceExhaustedError` traceback minutes later.

The estimate is in float32 bytes and counts what dominates:

  * the networks and their training state: every parameter of the M encoders,
    the decoder and a flow, times 4 (the weights, their gradient and Adam's two
    moments);
  * one training step: the activations of the B x M x S decoder passes (every
    hidden layer and the P x n likelihood parameters) and of the encoders,
    times 3 (forward values, backward gradients and a margin for XLA's temporaries);
    savae / vae_svi keep the graph of every refinement step (second order), so
    theirs is (refine_steps + 1) times that;
  * one evaluation chunk: eval_batch_size x eval_chunk decoder passes, times 2.

The step and the chunk never run at once, so the total is the state plus the
larger of the two. It is an estimate: TensorFlow's allocator, XLA's buffers and
the data add to it (the MNIST arrays are about 0.2 GB), so it is meant to
catch configs that are orders of magnitude too large, not to fill memory to the
last byte. The limit is the machine's physical memory (host RAM; a GPU's memory
is not queried, which would need TensorFlow). No TensorFlow here.
"""

import dataclasses
import os
from typing import Dict, Optional, Sequence, Tuple

from rec_vae_tf import config as config_lib
from rec_vae_tf import errors
from rec_vae_tf.data import catalog

FLOAT_BYTES = 4
STATE_COPIES = 4        # weights, gradient, Adam m and v
STEP_COPIES = 3         # forward activations, their gradients, temporaries
EVAL_COPIES = 2         # forward activations and temporaries (no backward pass)
CONV_KERNEL = 4         # conv_networks: k = 4, stride 2
CONV_BASE = {'conv_small': 32, 'conv_large': 64}
# The config fields that drive the estimate, named in the refusal.
DRIVERS = ('latent_dim', 'num_components', 'network', 'encoder_hidden_units', 'batch_size',
           'num_train_samples', 'eval_batch_size', 'eval_chunk')


class OutOfMemory(errors.UserError):
  """A config whose estimated memory exceeds the machine's."""


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Bytes per part: parameters (count), state, step, eval_chunk; total."""
  parameters: int
  state: float
  step: float
  eval_chunk: float

  @property
  def total(self) -> float:
    return self.state + max(self.step, self.eval_chunk)


def encoder_parameters(num_pixels: int, hidden: Sequence[int], latent_dim: int,
                       num_components: int, eps_mode: str) -> int:
  """Trainable parameters of `networks.MixtureEncoder` (dense), in closed form."""
  per, width = 0, num_pixels
  for h in hidden:
    per += width * h + h
    width = h
  per += 2 * (width * latent_dim + latent_dim)  # loc and scale heads
  if eps_mode == 'amortized':
    per += width + 1
  elif eps_mode == 'global':
    per += 1
  return num_components * per


def _dense(cfg: config_lib.Config, num_pixels: int, outputs: int) -> Tuple[int, int, int, int]:
  """(encoder params, decoder params, encoder activations, decoder activations) per example."""
  hidden = cfg.hidden_units
  enc_hidden = (cfg.encoder_hidden_units,) * len(hidden) if cfg.encoder_hidden_units else hidden
  enc = encoder_parameters(num_pixels, enc_hidden, cfg.latent_dim, cfg.num_components,
                           cfg.eps_mode)
  dec, width = 0, cfg.latent_dim
  for h in tuple(reversed(hidden)) + (num_pixels * outputs,):
    dec += width * h + h
    width = h
  enc_act = cfg.num_components * (sum(enc_hidden) + 2 * cfg.latent_dim)
  dec_act = sum(hidden) + num_pixels * outputs
  return enc, dec, enc_act, dec_act


def _conv(cfg: config_lib.Config, shape: Tuple[int, int, int],
          outputs: int) -> Tuple[int, int, int, int]:
  """The same for `conv_networks` (k = 4 stride-2 layers while the side is even and > 7)."""
  height, width, channels = shape
  sides, side = [], height
  while side % 2 == 0 and side > 7:
    side //= 2
    sides.append(side)
  filters = [CONV_BASE[cfg.network] * 2 ** i for i in range(len(sides))]
  conv, act, previous = 0, 0, channels
  for f, s in zip(filters, sides):
    conv += CONV_KERNEL * CONV_KERNEL * previous * f + f
    act += s * s * f
    previous = f
  features = sides[-1] * sides[-1] * filters[-1] if sides else height * width * channels
  heads = 2 * (features * cfg.latent_dim + cfg.latent_dim) + features + 1
  enc = cfg.num_components * (conv + heads)
  # The decoder mirrors it: a dense layer to the features, then transposed convs.
  dec = cfg.latent_dim * features + features + conv + CONV_KERNEL ** 2 * filters[0] * channels * outputs
  enc_act = cfg.num_components * (act + 2 * cfg.latent_dim)
  dec_act = features + act + height * width * channels * outputs
  return enc, dec, enc_act, dec_act


def _flow_parameters(cfg: config_lib.Config) -> int:
  if cfg.method == 'iaf':  # a MADE network per step: D -> H -> 2D
    h, d = cfg.flow_hidden_units, cfg.latent_dim
    return cfg.flow_steps * (d * h + h + h * 2 * d + 2 * d)
  if cfg.method == 'hf':
    return cfg.flow_steps * cfg.latent_dim
  return 0


def estimate(cfg: config_lib.Config) -> Estimate:
  """The estimate for `cfg` (module docstring)."""
  spec = catalog.SPECS[cfg.dataset]
  outputs = 2 if spec.likelihood == 'discretized_logistic' else 1
  if cfg.network in config_lib.CONV_NETWORKS:
    enc, dec, enc_act, dec_act = _conv(cfg, spec.image_shape, outputs)
  else:
    enc, dec, enc_act, dec_act = _dense(cfg, spec.num_pixels, outputs)
  parameters = enc + dec + _flow_parameters(cfg)
  samples = cfg.batch_size * cfg.num_components * cfg.num_train_samples
  step = FLOAT_BYTES * STEP_COPIES * (cfg.batch_size * (enc_act + spec.num_pixels) +
                                      samples * (dec_act + cfg.latent_dim))
  if cfg.method in ('savae', 'vae_svi'):
    step *= cfg.refine_steps + 1
  chunk = FLOAT_BYTES * EVAL_COPIES * cfg.eval_batch_size * min(
      cfg.eval_chunk, cfg.num_importance_samples) * (dec_act + cfg.latent_dim)
  return Estimate(parameters=parameters, state=float(FLOAT_BYTES * STATE_COPIES * parameters),
                  step=float(step), eval_chunk=float(chunk))


def physical_memory() -> Optional[int]:
  """Bytes of RAM on this machine (None where the OS does not say)."""
  try:
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    return None


def _gb(n: float) -> str:
  return f'{n / 1e9:.1f} GB'


def check(cfg: config_lib.Config, limit: Optional[int] = None) -> Estimate:
  """Refuses `cfg` with one line if its estimate exceeds `limit` (default: the RAM)."""
  est = estimate(cfg)
  limit = physical_memory() if limit is None else limit
  if limit is not None and est.total > limit:
    parts: Dict[str, float] = {'networks and Adam state': est.state,
                               'one training step': est.step,
                               'one evaluation chunk': est.eval_chunk}
    detail = ', '.join(f'{k} {_gb(v)}' for k, v in parts.items())
    drivers = ', '.join(f'{k}={getattr(cfg, k)}' for k in DRIVERS)
    raise OutOfMemory(
        f'the config needs about {_gb(est.total)} of memory ({detail}; '
        f'{est.parameters:,} parameters), more than this machine\'s {_gb(limit)}; '
        f'reduce the sizes that drive it ({drivers})')
  return est


def out_of_memory_message(error: BaseException, cfg_values: Dict[str, object]) -> str:
  """One line for a ResourceExhaustedError / MemoryError that got past `check`."""
  first = (str(getattr(error, 'message', '') or error).strip().splitlines() or [''])[0]
  drivers = ', '.join(f'{k}={cfg_values[k]}' for k in DRIVERS if k in cfg_values)
  return (f'out of memory ({type(error).__name__}: {first[:200]}); the sizes that drive it: '
          f'{drivers or "see --helpfull"}; the last good checkpoint is kept')
