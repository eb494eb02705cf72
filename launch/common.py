"""Shared pieces of the absl launchers: flag definitions and one-line errors.

Flags live here and in the launchers only; they are turned into a frozen,
validated `rec_vae_tf.config.Config` before any work is done.

Exit status of every launcher: 0 done; 2 a problem with the input (one line
`error: ...` on stderr, no traceback); 143 (128 + SIGTERM) preempted: training
saved a checkpoint after SIGTERM and stopped, and rerunning the same command
resumes. 143 is what a shell reports for a job killed by SIGTERM, so schedulers
and retry wrappers treat the job as unfinished (0 would mark it done).
"""

import logging
import os
import sys

# TensorFlow's C++ start-up chatter (CPU features, CUDA probing) is noise for a
# command-line user; warnings and errors still show.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import flags  # pylint: disable=g-import-not-at-top
from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

from rec_vae_tf.training import cluster  # pylint: disable=g-import-not-at-top
from rec_vae_tf.training import memory  # pylint: disable=g-import-not-at-top
from rec_vae_tf.training import workdir_lock  # pylint: disable=g-import-not-at-top
from rec_vae_tf import config as config_lib  # pylint: disable=g-import-not-at-top
from rec_vae_tf.data import catalog  # pylint: disable=g-import-not-at-top
from rec_vae_tf import errors  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
_DEFAULT = config_lib.Config()


def define_config_flags() -> None:
  """Defines one flag per `Config` field (defaults from `Config`)."""
  d = _DEFAULT
  flags.DEFINE_string('method', d.method,
                      f'Method to train: {", ".join(config_lib.METHODS)} (vae_svi is vae+svi: '
                      'savae without training the encoder through the refinement).')
  flags.DEFINE_integer('num_components', None,
                       'M, mixture components (encoders). Default: 4, or 1 for '
                       f'{", ".join(config_lib.SINGLE_ENCODER_METHODS)}.')
  flags.DEFINE_integer('latent_dim', d.latent_dim, 'D, latent dimensions.')
  flags.DEFINE_string('network', d.network,
                      'Network size: dense small (2x200 hidden) or large (2x500 hidden); conv '
                      'conv_small (channels 32, 64, ...) or conv_large (64, 128, ...), stride-2 '
                      'layers sized for the dataset\'s images (rec_vae_tf/models/conv_networks.py). '
                      'Colour datasets need a conv size.')
  flags.DEFINE_integer('encoder_hidden_units', d.encoder_hidden_units,
                       'Width of every encoder hidden layer (0: the network size\'s width); the '
                       'capacity-matched VAE uses it (launch/reproduce.py computes the width).')
  flags.DEFINE_integer('flow_steps', d.flow_steps,
                       'iaf and hf: number of IAF steps or Householder reflections.')
  flags.DEFINE_integer('flow_hidden_units', d.flow_hidden_units,
                       'iaf: hidden units of each step\'s autoregressive (MADE) network.')
  flags.DEFINE_string('mixture_bound', d.mixture_bound,
                      'rme, vae, boosted, mixture: the bound the decoder and mixing weights train '
                      'on: elbo (the stratified mixture ELBO) or iw (the importance-weighted '
                      'mixture bound over the same samples; mixture with iw is SIWAE).')
  flags.DEFINE_boolean('bound_to_encoders', d.bound_to_encoders,
                       'rme, boosted: the encoders also get the mixture bound\'s gradient, on top '
                       'of their component objectives J_m.')
  flags.DEFINE_boolean('dreg', d.dreg,
                       'iwae: the encoder\'s gradient by DReG (doubly reparameterized, Tucker et '
                       'al. 2019) instead of the bound\'s own.')
  flags.DEFINE_integer('valid_log_likelihood_every', d.valid_log_likelihood_every,
                       'Time-to-quality: every N epochs (0: never) record the importance-sampled '
                       'validation log p(x) in history.json (a measurement, unless '
                       '--selection=log_likelihood).')
  flags.DEFINE_integer('valid_log_likelihood_examples', d.valid_log_likelihood_examples,
                       'Validation images of that measurement (the first N).')
  flags.DEFINE_integer('valid_log_likelihood_samples', d.valid_log_likelihood_samples,
                       'K of that measurement.')
  flags.DEFINE_string('selection', d.selection,
                      'The state kept in best/ and evaluated: elbo (highest validation ELBO) or '
                      'log_likelihood (highest validation log p(x) of --valid_log_likelihood_every; '
                      'for methods trained on an importance-weighted bound, whose ELBO can fall '
                      'as they improve).')
  flags.DEFINE_float('kl_weight', d.kl_weight,
                     'lambda in [0, 1): weight of KL(q_m || Q_{m-1}) in the component objective.')
  flags.DEFINE_float('prior_floor', d.prior_floor,
                     'delta in [0, 1): the KL is measured against (1-delta) Q_{m-1} + delta p(z); '
                     '0 uses the raw KL (may diverge for large lambda).')
  flags.DEFINE_string('eps_mode', d.eps_mode,
                      'Mixing weights: amortized (eps_m(x) head), global (a scalar per component), '
                      'fixed (2/(m+1)).')
  flags.DEFINE_string('schedule', d.schedule,
                      'recursive (add a component every --epochs_per_component epochs), '
                      'freeze_earlier (same, earlier components frozen), simultaneous (all at once).')
  flags.DEFINE_float('epochs_per_component', d.epochs_per_component,
                     'Recursion budget: epochs of training before the next component is activated.')
  flags.DEFINE_boolean('warm_start', d.warm_start,
                       'Start each new component as a copy of the newest active one (recursive '
                       'schedules); otherwise it starts from its own random initialisation.')
  flags.DEFINE_integer('refine_steps', d.refine_steps,
                       'savae and vae_svi: K gradient steps refining each posterior on its ELBO, '
                       'in training and at test time (0: no refinement).')
  flags.DEFINE_float('refine_step_size', d.refine_step_size,
                     'savae and vae_svi: step size (> 0) of the refinement ascent on (loc, log scale).')
  flags.DEFINE_float('refine_momentum', d.refine_momentum,
                     'savae and vae_svi: momentum in [0, 1) of the refinement steps.')
  flags.DEFINE_string('dataset', d.dataset,
                      f'Dataset: {", ".join(config_lib.DATASETS)} (README, "Datasets": source, '
                      'split, files). Binary images use a Bernoulli decoder; svhn and celeba are '
                      'colour, modelled with a discretized logistic and reported in nats and '
                      'bits per dimension.')
  flags.DEFINE_string('data_dir', d.data_dir,
                      'Directory with the dataset\'s files: for mnist, mnist.npz (./run.sh '
                      'prepares it) or the original IDX .gz files; for the others the files of '
                      'README "Datasets" (svhn, celeba: a tensorflow-datasets data_dir).')
  flags.DEFINE_string('binarization', d.binarization,
                      'dynamic (fresh Bernoulli draw each epoch) or static (one fixed draw) for '
                      'grey datasets; fixed for the already-binary binarized_mnist and '
                      'caltech101_silhouettes; none for colour. Default: dynamic, or the only '
                      'one the --dataset allows.')
  flags.DEFINE_integer('train_examples', d.train_examples,
                       'Use only the first N training images (0: all); for smoke runs.')
  flags.DEFINE_integer('epochs', d.epochs, 'Training epochs.')
  flags.DEFINE_integer('batch_size', d.batch_size, 'Training batch size.')
  flags.DEFINE_float('learning_rate', d.learning_rate, 'Adam learning rate.')
  flags.DEFINE_integer('num_train_samples', d.num_train_samples,
                       'S, reparameterized samples per component per training step.')
  flags.DEFINE_integer('seed', d.seed, 'Random seed (initialisation, data order, noise).')
  flags.DEFINE_boolean('xla', d.xla, 'Compile the training and evaluation steps with XLA.')
  flags.DEFINE_boolean('deterministic', d.deterministic,
                       'Enable TensorFlow op determinism while training: the same command gives '
                       'bit-identical parameters and history on the same machine (seeds are '
                       'stateless either way). Ops without a deterministic kernel then fail '
                       'instead of running.')
  flags.DEFINE_boolean('mixed_precision', d.mixed_precision,
                       'Run the networks\' matmuls in bfloat16 (variables, losses and log densities '
                       'stay float32). Meant for GPUs with bfloat16 tensor cores; not measured on a '
                       'GPU yet, and 10-18% slower on the project\'s CPU, which has AVX512_BF16 '
                       '(README, "Performance").')
  flags.DEFINE_string('strategy', d.strategy,
                      'tf.distribute strategy (README, "Distributed training"): default (one '
                      'device), mirrored (all local GPUs, or the CPU devices), multi_worker '
                      '(MultiWorkerMirroredStrategy; every worker runs the same command with its '
                      'own TF_CONFIG), tpu (TPUStrategy; untested). The global batch is '
                      '--batch_size whatever the strategy, split evenly over the replicas.')
  flags.DEFINE_integer('num_importance_samples', d.num_importance_samples,
                       'K, importance samples per test image for log p(x) (5000 is the literature standard).')
  flags.DEFINE_integer('eval_batch_size', d.eval_batch_size, 'Evaluation batch size.')
  flags.DEFINE_integer('eval_chunk', d.eval_chunk,
                       'Importance samples evaluated at once (bounds memory).')
  flags.DEFINE_integer('validation_every', d.validation_every,
                       'Epochs between validation ELBO evaluations (model selection).')


def config_from_flags(**overrides) -> config_lib.Config:
  """Builds and validates the Config from the parsed flags."""
  values = {}
  for field in config_lib.Config.__dataclass_fields__:
    if field in FLAGS:
      values[field] = FLAGS[field].value
  values.update(overrides)
  method = values.get('method')
  if method in config_lib.METHODS:  # else validation names the allowed methods
    fixed = config_lib.method_defaults(method, _DEFAULT.num_components)
    if values.get('num_components') is None:
      values['num_components'] = fixed['num_components']
    if 'schedule' in fixed and not FLAGS['schedule'].present and 'schedule' not in overrides:
      values['schedule'] = fixed['schedule']
  if (not FLAGS['binarization'].present and 'binarization' not in overrides and
      values.get('dataset') in config_lib.DATASET_BINARIZATIONS):
    values['binarization'] = config_lib.default_binarization(values['dataset'])
  cfg = config_lib.Config(**values).validate()
  cluster.check_strategy_environment(cfg.strategy)  # a malformed TF_CONFIG: one line, no TF
  return cfg


def check_data_dir(data_dir: str, dataset: str = 'mnist') -> None:
  """Fails with one line if the data directory is missing, saying which files go there.

  Runs before TensorFlow loads; for the datasets other than mnist the message
  comes from `catalog.SPECS`.
  """
  if os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise errors.DataError(f'data directory {data_dir} is a file, not a directory')
  if not os.path.isdir(data_dir):
    if dataset != 'mnist' and dataset in catalog.SPECS:
      raise errors.DataError(
          f'data directory {data_dir} does not exist; to get {dataset}: '
          f'{catalog.SPECS[dataset].how_to_prepare(data_dir)}, then pass --data_dir={data_dir}')
    raise errors.DataError(
        f'data directory {data_dir} does not exist; run ./run.sh (it prepares MNIST offline) or '
        f'python -m launch.prepare_data --data_dir={data_dir}, or put the MNIST IDX .gz files there')


def claim_workdir(workdir: str, cfg: config_lib.Config = None, *, flag: str = '--workdir',
                  what: str = 'training') -> None:
  """Before TensorFlow loads: cfg's memory bounded, workdir writable and its lock held until exit.

  The memory check (rec_vae_tf/training/memory.py) refuses a config whose
  estimate exceeds the machine's RAM with one line giving both, before anything
  is created. The lock (rec_vae_tf/training/workdir_lock.py) refuses a second
  writer with one line naming the first; under multi_worker only the chief
  takes it. A directory created here and left empty when the program fails is
  removed again (`_fail`).
  """
  if cfg is not None:
    memory.check(cfg)
  created = not os.path.exists(workdir)
  config_lib.check_workdir(workdir)
  if cfg is None or cfg.strategy != 'multi_worker' or cluster.from_environment().is_chief:
    if created:
      _CREATED.append(workdir)
    workdir_lock.acquire(workdir, flag=flag, what=what)
    _CLAIMED.append(workdir)


# The directories claim_workdir locked, released when the launcher's main ends (`run`), and
# those it created, removed by `_fail` if the failure left them empty.
_CLAIMED = []
_CREATED = []


def remove_on_failure(directory: str) -> None:
  """`_fail` removes `directory` if it is empty then (after the locks are released)."""
  _CREATED.append(directory)


def _release_claimed(remove_created: bool = False) -> None:
  """Releases the claimed locks (a lock file alone in its directory goes with its lock)."""
  while _CLAIMED:
    workdir_lock.release(_CLAIMED.pop())
  for directory in _CREATED if remove_created else ():
    try:
      os.rmdir(directory)  # only an empty directory
    except OSError:
      pass
  _CREATED.clear()


def _out_of_memory(e: BaseException) -> bool:
  """A MemoryError, or TensorFlow's ResourceExhaustedError (without importing TensorFlow)."""
  if isinstance(e, MemoryError):
    return True
  tf = sys.modules.get('tensorflow')
  return tf is not None and isinstance(e, tf.errors.ResourceExhaustedError)


# Exit status after SIGTERM stopped training with a checkpoint saved (128 + 15).
PREEMPTED_EXIT_STATUS = 143


def parse_flags(argv):
  """absl's flag parser for app.run(flags_parser=...): a bad flag is one `error:` line, status 2.

  absl's own parser prints `FATAL Flags parsing error: ...` and a usage hint and
  exits with status 1; this keeps every bad input to the one-line contract.
  """
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(f'{" ".join(str(e).split())} (--helpfull lists the flags)')


def run(main):
  """absl main wrapper: a UserError becomes one line on stderr and exit status 2.

  Running out of memory (ResourceExhaustedError, MemoryError) is one line too,
  naming the config fields that drive memory, and status 2 (checkpoints are
  written atomically, so the last good one is kept).

  errors.Preempted (SIGTERM during training, checkpoint saved) becomes one line
  `preempted at step N; checkpoint ...; rerun the same command to resume` on
  stderr and exit status PREEMPTED_EXIT_STATUS.
  """
  def wrapped(argv):
    # INFO chatter from TF's Python side (checkpoint sharding, SavedModel assets) is noise here.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger('tensorflow').setLevel(logging.WARNING)
    if len(argv) > 1:
      _fail(f'unexpected positional arguments: {" ".join(argv[1:])} (flags are --name=value)')
    try:
      return main(argv)
    except errors.UserError as e:
      _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    except errors.Preempted as e:
      sys.stdout.flush()
      sys.stderr.write(f'{e}\n')
      sys.stderr.flush()
      sys.exit(PREEMPTED_EXIT_STATUS)
    except KeyboardInterrupt:
      _fail('interrupted; the last checkpoint is kept, re-run the same command to resume')
    except Exception as e:  # pylint: disable=broad-except  (re-raised unless out of memory)
      if not _out_of_memory(e):
        raise
      values = {k: FLAGS[k].value for k in memory.DRIVERS if k in FLAGS}
      _fail(memory.out_of_memory_message(e, values))
    finally:
      _release_claimed()  # the process's exit would too; this is for in-process callers
  return wrapped


def _fail(message: str) -> None:
  _release_claimed(remove_created=True)
  sys.stdout.flush()
  sys.stderr.write(f'error: {message}\n')
  sys.stderr.flush()
  sys.exit(2)


def log(message: str) -> None:
  print(message, flush=True)
