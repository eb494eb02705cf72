"""Frozen, validated run configuration.

One `Config` describes a training run completely: data, networks, the RME
objective (RME.md, "The four updates"), the recursion schedule, optimisation
and evaluation. Launchers build it from absl flags, call `validate()` before
any work, and write it as JSON into the run directory; library code takes it
as an explicit argument and never reads flags.

Methods (all through the same trainer, data, decoder and evaluation):
  rme      recursive mixture estimation with M = num_components encoders.
  vae      the Kingma & Welling VAE: M = 1.
  boosted  RME's recursion with boosted VI's entropy-regularised component
           objective (RELBO) in place of the KL.
  mixture  the same mixture family, all components, weights and decoder
           trained jointly on the mixture ELBO (schedule simultaneous).
  iwae     one encoder trained with the importance-weighted bound over
           num_train_samples samples.
  savae    semi-amortized VAE (Kim et al. 2018): one encoder whose output is
           refined by refine_steps momentum gradient steps on each example's
           ELBO, at training and at test time; the encoder is trained through
           the steps (second order), the decoder at the refined posterior.
  vae_svi  the cheaper "vae+svi": the encoder is a plain VAE encoder (trained
           on its own ELBO), the decoder is trained at the refined posterior
           (refinement held constant); refined at test time too.
  iaf      one encoder whose Gaussian is pushed through flow_steps inverse
           autoregressive flow steps conditioned on its features (TFP bijectors).
  hf       the same with flow_steps Householder reflections (volume preserving).
The capacity-matched VAE is method vae with encoder_hidden_units set so that
its one encoder has about as many parameters as RME's M encoders.
"""

import dataclasses
import json
import math
import os
from typing import Any, Dict, Tuple

from rec_vae_tf import errors
from rec_vae_tf.data import catalog
from rec_vae_tf import methods

# The registry of methods (rec_vae_tf.methods.SPECS; loads without TensorFlow).
METHODS = tuple(methods.SPECS)
SINGLE_ENCODER_METHODS = tuple(m for m, spec in methods.SPECS.items() if spec.single_encoder)
# Datasets and binarizations have one definition, rec_vae_tf.data.catalog (which
# loads without TensorFlow); these names are kept for the modules that use them.
DATASETS = catalog.DATASETS                            # the --dataset values
BINARIZATIONS = catalog.BINARIZATIONS                  # dynamic, static, fixed, none
DATASET_BINARIZATIONS = catalog.DATASET_BINARIZATIONS  # allowed per dataset; first = default
COLOUR_DATASETS = catalog.COLOUR_DATASETS              # discretized logistic: conv networks only
DENSE_NETWORKS = ('small', 'large')
CONV_NETWORKS = ('conv_small', 'conv_large')  # rec_vae_tf.models.conv_networks
NETWORKS = DENSE_NETWORKS + CONV_NETWORKS
EPS_MODES = ('amortized', 'global', 'fixed')
# tf.distribute strategies (rec_vae_tf/training/distribute.py): default runs without one.
STRATEGIES = ('default', 'mirrored', 'multi_worker', 'tpu')
SCHEDULES = ('recursive', 'freeze_earlier', 'simultaneous')
MIXTURE_BOUNDS = ('elbo', 'iw')
SELECTIONS = ('elbo', 'log_likelihood')

# Dense encoder/decoder widths per network size: (hidden units per layer).
# `small` is the IWAE paper's one-stochastic-layer MNIST network (2 x 200);
# `large` doubles depth-width in the usual way (2 x 500). The conv sizes have
# no dense hidden layers: their channels are in `conv_networks.conv_channels`.
NETWORK_HIDDEN = {'small': (200, 200), 'large': (500, 500), 'conv_small': (), 'conv_large': ()}


def default_binarization(dataset: str) -> str:
  """The binarization a launcher uses for `dataset` when none is given ('dynamic' for mnist)."""
  return DATASET_BINARIZATIONS.get(dataset, BINARIZATIONS)[0]


class _FieldCheck:
  """Config.validate's checks of one field: fail naming field, value and what is allowed."""

  def __init__(self, cfg: 'Config'):
    self.cfg = cfg

  def fail(self, field, allowed):
    raise errors.ConfigError(
        f'invalid config: {field}={getattr(self.cfg, field)!r}; allowed: {allowed}')

  def choice(self, field, options):
    if getattr(self.cfg, field) not in options:
      self.fail(field, 'one of ' + ', '.join(options))

  def integer(self, field, low, high=None):
    value = getattr(self.cfg, field)
    if (isinstance(value, bool) or not isinstance(value, int) or value < low or
        (high is not None and value > high)):
      self.fail(field, f'an integer >= {low}' + (f' and <= {high}' if high else ''))

  def real(self, field, low, high, high_open=False):
    value = getattr(self.cfg, field)
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and
          math.isfinite(value) and low <= value and
          (value < high if high_open else value <= high))
    if not ok:
      self.fail(field, f'a number in [{low}, {high}{")" if high_open else "]"}')


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that defines a run. All fields are plain JSON values."""
  # What to train.
  method: str = 'rme'
  num_components: int = 4          # M, the mixture capacity (1 for vae)
  latent_dim: int = 50             # D
  network: str = 'small'           # NETWORKS: dense small / large, conv conv_small / conv_large
  encoder_hidden_units: int = 0    # 0: the network's widths; N: every encoder hidden layer has N units
  # RME objective.
  kl_weight: float = 0.1           # lambda in J_lambda; 0 <= lambda < 1 (README: ablation)
  prior_floor: float = 0.05        # delta: KL measured against (1-delta) Q + delta p(z)
  eps_mode: str = 'amortized'
  schedule: str = 'recursive'
  epochs_per_component: float = 3.0  # recursion budget: epochs before the next component
  warm_start: bool = True          # a new component starts as a copy of the newest one
  # Per-example refinement (savae, vae_svi only): K momentum ascent steps on the ELBO
  # over (loc, log scale), each example's gradient clipped (semi_amortized.REFINE_MAX_GRAD_NORM).
  refine_steps: int = 20           # K; 0 makes savae a plain VAE
  # Ascent step size. Measured on a 3-epoch small-network MNIST VAE (500 test images,
  # K = 20, momentum 0.5, clip 5): ELBO -198.4 unrefined; step 0.02: -195.4,
  # 0.05: -195.3, 0.1: -196.0, 0.3: -199.7, 1.0: -269.8 (SA-VAE's 1.0 overshoots here).
  refine_step_size: float = 0.05
  refine_momentum: float = 0.5     # heavy-ball momentum in [0, 1)
  # Flow posteriors (iaf, hf only).
  flow_steps: int = 2              # T: IAF steps or Householder reflections
  flow_hidden_units: int = 200     # IAF: hidden units of each step's MADE network
  # The bound the decoder and the mixing weights are trained on (mixture methods and
  # vae): 'elbo', the stratified mixture ELBO; 'iw', the importance-weighted mixture
  # bound over the same samples (SIWAE; objective.mixture_iw_bound).
  mixture_bound: str = 'elbo'
  # rme / boosted: the encoders also get the mixture bound's gradient, on top of J_m.
  bound_to_encoders: bool = False
  # iwae: the encoder's gradient by DReG (doubly reparameterized; objective.dreg_surrogate).
  dreg: bool = False
  # Data.
  dataset: str = 'mnist'           # DATASETS (rec_vae_tf.data.catalog)
  data_dir: str = 'data/mnist'
  binarization: str = 'dynamic'    # DATASET_BINARIZATIONS[dataset]
  train_examples: int = 0          # 0: all; N: only the first N training images
  # Optimisation.
  epochs: int = 40
  batch_size: int = 100
  learning_rate: float = 1e-3
  num_train_samples: int = 1       # S, reparameterized samples per component per step
  seed: int = 0
  xla: bool = True
  # tf.config.experimental.enable_op_determinism() while training (validation included):
  # the same command gives bit-identical parameters and metrics on the same machine (the
  # data order and all noise are stateless functions of the seed either way).
  deterministic: bool = False
  mixed_precision: bool = False    # bfloat16 matmuls, float32 variables and density math (GPU-oriented)
  # STRATEGIES: how the steps run (rec_vae_tf/training/distribute.py), not what is trained: the
  # global batch, data and noise are the same under every strategy, so a run may be
  # resumed under another one. Omitted from to_dict() when 'default', so config.json
  # and the grid's training keys of runs without a strategy are unchanged.
  strategy: str = 'default'
  # Evaluation.
  num_importance_samples: int = 5000  # K for the test log-likelihood
  eval_batch_size: int = 100
  eval_chunk: int = 500            # importance samples per chunk (bounds memory)
  validation_every: int = 1        # epochs between validation ELBOs (and ELBO selections)
  # Time-to-quality: every N epochs (0: never), importance-sampled validation log p(x)
  # with K = valid_log_likelihood_samples on the first valid_log_likelihood_examples
  # validation images (binarized once, the same draws every time), recorded in
  # history.json with the training seconds so far. A measurement only, unless
  # selection = 'log_likelihood'.
  valid_log_likelihood_every: int = 0
  valid_log_likelihood_examples: int = 1000
  valid_log_likelihood_samples: int = 100
  # Which state best/ keeps (the one evaluated): 'elbo', the highest validation ELBO
  # (every validation_every epochs); 'log_likelihood', the highest validation log p(x)
  # above (every valid_log_likelihood_every epochs). For methods trained on an
  # importance-weighted bound, whose ELBO can fall while their bound and log p(x)
  # rise: compare40's SIWAE seed 2 kept epoch 13 by its ELBO (README).
  selection: str = 'elbo'

  # ---------------------------------------------------------------- derived
  @property
  def hidden_units(self) -> Tuple[int, ...]:
    return NETWORK_HIDDEN[self.network]

  @property
  def encoder_hidden(self) -> Tuple[int, ...]:
    """The encoders' hidden widths (the decoder keeps `hidden_units`)."""
    if self.encoder_hidden_units:
      return (self.encoder_hidden_units,) * len(self.hidden_units)
    return self.hidden_units

  # ------------------------------------------------------------- validation
  def validate(self) -> 'Config':
    """Checks every field; raises ConfigError naming field, value and what is allowed."""
    check = _FieldCheck(self)
    self._validate_model(check)
    self._validate_training(check)
    return self

  def _validate_model(self, check: '_FieldCheck') -> None:
    """What is trained, on which data: method, networks, options."""
    fail, choice, integer = check.fail, check.choice, check.integer
    choice('method', METHODS)
    choice('dataset', DATASETS)
    choice('binarization', BINARIZATIONS)
    choice('network', NETWORKS)
    if self.binarization not in DATASET_BINARIZATIONS[self.dataset]:
      fail('binarization', f'{" or ".join(DATASET_BINARIZATIONS[self.dataset])} for '
           f'dataset={self.dataset}')
    if self.dataset in COLOUR_DATASETS and self.network not in CONV_NETWORKS:
      fail('network', f'{" or ".join(CONV_NETWORKS)} for dataset={self.dataset} (colour images '
           'need the conv decoder\'s discretized logistic)')
    choice('eps_mode', EPS_MODES)
    choice('schedule', SCHEDULES)
    choice('strategy', STRATEGIES)
    integer('num_components', 1, 64)
    if self.method in SINGLE_ENCODER_METHODS and self.num_components != 1:
      fail('num_components', f'1 for method={self.method} (it has one encoder)')
    required_schedule = methods.SPECS[self.method].schedule
    if required_schedule and self.schedule != required_schedule:
      fail('schedule', f'{required_schedule} for method={self.method}')
    integer('latent_dim', 1)
    integer('encoder_hidden_units', 0, 100000)
    if self.encoder_hidden_units and self.network in CONV_NETWORKS:
      fail('encoder_hidden_units', f'0 for network={self.network} (dense widths only)')
    choice('mixture_bound', MIXTURE_BOUNDS)
    for field in ('mixture_bound', 'bound_to_encoders', 'dreg'):  # options some methods take
      if (getattr(self, field) != _OMITTED_AT_DEFAULT[field] and
          field not in methods.SPECS[self.method].options):
        fail(field, f'{_OMITTED_AT_DEFAULT[field]!r} for method={self.method} (only '
             f'{", ".join(m for m, spec in methods.SPECS.items() if field in spec.options)} '
             'take it)')
    integer('flow_steps', 1, 64)
    integer('flow_hidden_units', 1, 100000)

  def _validate_training(self, check: '_FieldCheck') -> None:
    """The objective's numbers, optimisation, evaluation and the plain-typed fields."""
    fail, integer, real = check.fail, check.integer, check.real
    real('kl_weight', 0.0, 1.0, high_open=True)
    real('prior_floor', 0.0, 1.0, high_open=True)
    real('epochs_per_component', 0.0, 1e6)
    if self.epochs_per_component <= 0:
      fail('epochs_per_component', 'a number > 0')
    integer('refine_steps', 0)
    real('refine_step_size', 0.0, 100.0)
    if self.refine_step_size <= 0:
      fail('refine_step_size', 'a number in (0, 100]')
    real('refine_momentum', 0.0, 1.0, high_open=True)
    integer('train_examples', 0)
    integer('epochs', 1)
    integer('batch_size', 1)
    real('learning_rate', 0.0, 10.0)
    if self.learning_rate <= 0:
      fail('learning_rate', 'a number in (0, 10]')
    integer('num_train_samples', 1)
    integer('seed', 0)
    integer('num_importance_samples', 1)
    integer('eval_batch_size', 1)
    integer('eval_chunk', 1)
    integer('validation_every', 1)
    integer('valid_log_likelihood_every', 0)
    integer('valid_log_likelihood_examples', 1)
    integer('valid_log_likelihood_samples', 1)
    check.choice('selection', SELECTIONS)
    if self.selection == 'log_likelihood' and not self.valid_log_likelihood_every:
      fail('selection', 'elbo while valid_log_likelihood_every=0 (log_likelihood selects among '
           'the epochs where validation log p(x) is measured)')
    if not isinstance(self.data_dir, str) or not self.data_dir:
      fail('data_dir', 'a non-empty path')
    for field in ('xla', 'warm_start', 'mixed_precision', 'deterministic', 'dreg',
                  'bound_to_encoders'):
      if not isinstance(getattr(self, field), bool):
        fail(field, 'true or false')

  # -------------------------------------------------------------- recursion
  def last_activation_epoch(self) -> float:
    """Epoch at which the last component becomes active under `recursive`."""
    if self.schedule == 'simultaneous':
      return 0.0
    return (self.num_components - 1) * self.epochs_per_component

  # -------------------------------------------------------------------- I/O
  def to_dict(self) -> Dict[str, Any]:
    """The fields as JSON values; fields added later are left out at their defaults.

    So config.json files and the grid's training keys (a hash of this dict) of
    runs made before such a field existed stay valid.
    """
    values = dataclasses.asdict(self)
    for name, default in _OMITTED_AT_DEFAULT.items():
      if values[name] == default:
        del values[name]
    return values

  def replace(self, **changes) -> 'Config':
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_dict(cls, values: Dict[str, Any]) -> 'Config':
    """A Config of the fields in `values` (not yet validated).

    Raises:
      ConfigError: values is not a dict (a JSON object), or has unknown fields.
    """
    if not isinstance(values, dict):
      raise errors.ConfigError(f'invalid config: a JSON {_json_type(values)}, expected an '
                               'object of config fields')
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(values) - names))
    if unknown:
      raise errors.ConfigError(f'invalid config: unknown field(s) {", ".join(unknown)}')
    return cls(**values)

  def save(self, path: str) -> None:
    """Writes the config as JSON atomically (temporary file, then rename)."""
    write_json_atomic(path, self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def load(cls, path: str) -> 'Config':
    """Reads and validates a config.json written by `save`.

    Raises:
      UserError: no file at path, or path's directory is not a directory.
      ConfigError: the file is unreadable, not JSON (or not UTF-8), or holds
        fields of the wrong type or value (edited by hand); the message names
        the file and the field.
    """
    where = 'is this a run directory written by launch/train.py?'
    try:
      with open(path) as f:
        values = json.load(f)
    except FileNotFoundError:
      raise errors.UserError(f'no config at {path}: {where}') from None
    except NotADirectoryError:
      raise errors.UserError(f'no config at {path}: {os.path.dirname(path)} is not a '
                             f'directory; {where}') from None
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
      raise errors.ConfigError(f'unreadable config {path}: {" ".join(str(e).split())}') from None
    try:
      return cls.from_dict(values).validate()
    except errors.ConfigError as e:
      raise errors.ConfigError(f'{path}: {e}') from None


# Fields added after runs were made, and their defaults (see Config.to_dict).
_OMITTED_AT_DEFAULT = {
    'strategy': 'default',
    'valid_log_likelihood_every': 0,
    'valid_log_likelihood_examples': 1000,
    'valid_log_likelihood_samples': 100,
    'mixture_bound': 'elbo',
    'bound_to_encoders': False,
    'dreg': False,
    'selection': 'elbo',
}


def _json_type(value) -> str:
  """The JSON name of a parsed JSON value's type."""
  names = {dict: 'object', list: 'list', str: 'string', bool: 'boolean', type(None): 'null'}
  return names.get(type(value), 'number')


def default_config(method: str = 'rme', **overrides) -> Config:
  """The default configuration for a method, with overrides applied (not yet validated)."""
  return Config().replace(**method_defaults(method, Config.num_components)).replace(**overrides)


def method_defaults(method: str, num_components: int) -> Dict[str, Any]:
  """The fields a method fixes: method, num_components (1 for one encoder), schedule."""
  spec = methods.SPECS[method]
  values = {'method': method, 'num_components': 1 if spec.single_encoder else num_components}
  if spec.schedule:
    values['schedule'] = spec.schedule
  return values


CONFIG_FILENAME = 'config.json'


def write_text_atomic(path: str, text: str) -> None:
  """Writes `text` to a temporary file, then renames it onto `path`.

  Every file the project writes goes through here (or `write_json_atomic`): a
  reader, or a run killed mid-write, sees the old file or the new one, never half.
  """
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def write_json_atomic(path: str, value: Any, *, indent: int = 1, sort_keys: bool = False) -> None:
  """`value` as JSON, atomically (`write_text_atomic`)."""
  write_text_atomic(path, json.dumps(value, indent=indent, sort_keys=sort_keys) + '\n')


def config_path(workdir: str) -> str:
  return os.path.join(workdir, CONFIG_FILENAME)


def check_workdir(workdir: str) -> None:
  """Fails fast with a one-line UserError if workdir cannot be created or written.

  Creates workdir and writes and removes a small probe file: catches a file
  (or a symlink to one, or a dangling symlink) in its place, a path under a
  file, a read-only directory or file system, and a full disk. Needs no
  TensorFlow, so launchers run it before loading TensorFlow.
  """
  if os.path.islink(workdir) and not os.path.exists(workdir):
    raise errors.UserError(f'workdir {workdir} is a symlink to {os.readlink(workdir)}, which '
                           'does not exist')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    target = f' (a symlink to {os.path.realpath(workdir)})' if os.path.islink(workdir) else ''
    raise errors.UserError(f'workdir {workdir} is a file{target}, not a directory')
  # Named per process: the workers of a multi-worker run share the workdir.
  probe = os.path.join(workdir, f'.{os.getpid()}.write_probe')
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    if os.path.isfile(probe):
      try:
        os.remove(probe)
      except OSError:
        pass
    raise errors.UserError(f'workdir {workdir} is not writable: {e.strerror or e}') from None

