"""The RME training loop (RME.md, "The four updates" and "Schedules").

Two loops:
  * inner: `Trainer.train_steps`, a `tf.function` that runs N steps over a
    dataset iterator. Each step draws the method's noise (a pure function of
    seed and step), asks the method (rec_vae_tf.methods) for its gradients
    (each loss w.r.t. the variables it trains: for RME, sum_m J_m w.r.t. the
    encoders and the stratified mixture ELBO w.r.t. the decoder and the
    mixing weights) and applies them with one Adam optimizer. The step is
    optionally XLA-compiled and its arguments are tensors, so it traces once.
  * outer (Python): epochs, the recursion schedule (how many components are
    active), validation and model selection, checkpoints, TensorBoard
    summaries, progress lines, and the NaN/Inf guard.

Everything needed to resume lives in one `tf.train.Checkpoint`: networks,
optimizer, global step, active-component count and the best validation score.
The data order and binarization noise are functions of (seed, epoch), so the
data position is recovered from the step count.

Distribution (README, "Distributed training"): under a tf.distribute strategy
(`Config.strategy`, rec_vae_tf/training/distribute.py) the networks, optimizer and
variables live in the strategy's scope; each replica runs the (optionally
XLA-compiled) gradient computation on its B / R rows of the global batch with
its rows of the step's noise, losses as sums over its rows divided by the
global B; the Keras optimizer all-reduces (sums) the gradients and applies
them outside XLA (XLA cannot compile a step whose variables live on several
devices). Validation is sharded across replicas and reduced as float64 sums.
The chief alone writes checkpoints, history and summaries; a SIGTERM on any
worker stops all of them at the same step. `default` keeps the original
single-device code path.

Faults (README, "Faults and preemption"): SIGTERM during `train` finishes the
current chunk of at most MAX_CHUNK_STEPS steps, saves a checkpoint and raises
`errors.Preempted`; `restore_latest` skips an unreadable checkpoint for the one
before it; a workdir that is not writable or lacks room for the checkpoints,
and a checkpoint or history write that fails, stop with one line naming what
was kept.
"""

import contextlib
import dataclasses
import glob
import json
import math
import os
import re
import shutil
import signal
import threading
import time
from typing import Callable, Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from rec_vae_tf.models import builders
from rec_vae_tf import config as config_lib
from rec_vae_tf.data import pipeline as data_lib
from rec_vae_tf.data import sources as data_sources
from rec_vae_tf.training import distribute
from rec_vae_tf import errors
from rec_vae_tf import methods
from rec_vae_tf.evaluation import likelihood
from rec_vae_tf.models import posterior

CHECKPOINT_DIR = 'checkpoints'
BEST_DIR = 'best'
HISTORY_FILE = 'history.json'
SUMMARY_DIR = 'summaries'
# The running sums of an epoch interrupted by SIGTERM, for its history entry.
PARTIAL_EPOCH_FILE = 'partial_epoch.json'
# At most this many steps per call of the compiled loop (`train_steps`). The
# outer loop answers SIGTERM between calls, so this bounds the response time
# (about 0.4 s of training for the default RME run on this project's CPU);
# the cap cost no measurable speed (README, "Faults and preemption"). Chunks
# end at multiples of it, so a run resumed at a chunk end splits and sums its
# steps exactly as an uninterrupted run does.
MAX_CHUNK_STEPS = 100
# Free space wanted beyond the checkpoints (history, summaries, evaluations).
_FREE_SPACE_MARGIN_BYTES = 16 << 20
def num_active_at(cfg: config_lib.Config, step: int, steps_per_epoch: int) -> int:
  """Active components after `step` optimisation steps under cfg's schedule."""
  if cfg.schedule == 'simultaneous':
    return cfg.num_components
  per_component = max(1, int(round(cfg.epochs_per_component * steps_per_epoch)))
  return int(min(cfg.num_components, 1 + step // per_component))


def next_activation_step(cfg: config_lib.Config, step: int, steps_per_epoch: int) -> Optional[int]:
  """First step > `step` at which the active count changes, or None."""
  if cfg.schedule == 'simultaneous' or num_active_at(cfg, step, steps_per_epoch) >= cfg.num_components:
    return None
  per_component = max(1, int(round(cfg.epochs_per_component * steps_per_epoch)))
  return (step // per_component + 1) * per_component


class Trainer:
  """Owns the networks, optimizer, checkpoint and the compiled step of one run."""

  def __init__(self, cfg: config_lib.Config, workdir: str, *,
               make_networks: Optional[Callable] = None,
               num_pixels: Optional[int] = None,
               distribution: Optional[distribute.Distribution] = None):
    self.cfg = cfg
    self.workdir = workdir
    # None: no strategy (the default one), whatever cfg.strategy says.
    self.dist = distribution or distribute.get('default')
    with self.dist.scope():  # networks, optimizer and every variable (nothing for default)
      self._build(cfg, workdir, make_networks, num_pixels)
    if self.dist.distributed:
      # Per replica: the gradients (XLA-compiled if cfg.xla); the all-reduce and
      # the optimizer step run outside XLA, in `_replica_step`.
      self._compiled_gradients = tf.function(self._gradients, jit_compile=cfg.xla)
      self.train_steps = tf.function(self._distributed_train_steps)

  def _build(self, cfg, workdir, make_networks, num_pixels):
    """Creates the networks, optimizer, variables, checkpoints and the compiled step."""
    # None: the networks and image size cfg.network and cfg.dataset select (rec_vae_tf.models.builders).
    make_networks = make_networks or builders.make_networks_fn(cfg)
    num_pixels = num_pixels or builders.num_pixels(cfg)
    # mixed_precision and encoder_hidden_units are passed only when set, so
    # factories without them keep working.
    extra = {}
    if cfg.mixed_precision:
      extra['mixed_precision'] = True
    if cfg.encoder_hidden_units:
      extra['encoder_hidden_units'] = cfg.encoder_hidden
    self.encoder, self.decoder = make_networks(
        cfg.num_components, cfg.hidden_units, cfg.latent_dim, cfg.eps_mode, cfg.seed,
        num_pixels=num_pixels, **extra)
    # What differs between methods (losses, variable groups, posterior, extra
    # parts such as a flow): rec_vae_tf.methods.
    self.method = methods.build(cfg, self.encoder, self.decoder, num_pixels=num_pixels)
    self.component_vars = self.method.component_variables
    self.mixture_vars = self.method.mixture_variables
    self.all_vars = self.component_vars + self.mixture_vars
    # Variables with one slice per component (leading axis M): frozen slice-wise
    # under `freeze_earlier`.
    self._sliced_vars = self.method.sliced_variables
    self.optimizer = keras.optimizers.Adam(cfg.learning_rate)
    self.optimizer.build(self.all_vars)

    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name='step')
    self.num_active = tf.Variable(1 if cfg.schedule != 'simultaneous' else cfg.num_components,
                                  dtype=tf.int32, trainable=False, name='num_active')
    self.best_validation = tf.Variable(-np.inf, dtype=tf.float64, trainable=False,
                                       name='best_validation_elbo')
    posterior_parts = self.method.modules  # e.g. {'flow': ...}
    self.checkpoint = tf.train.Checkpoint(
        encoder=self.encoder, decoder=self.decoder, optimizer=self.optimizer,
        step=self.step, num_active=self.num_active, best_validation=self.best_validation,
        **posterior_parts)
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, os.path.join(workdir, CHECKPOINT_DIR), max_to_keep=3)
    # The selected model: networks and the state they were selected in.
    self._best_step = tf.Variable(0, dtype=tf.int64, trainable=False)
    self._best_active = tf.Variable(1, dtype=tf.int32, trainable=False)
    self.best_checkpoint = tf.train.Checkpoint(
        encoder=self.encoder, decoder=self.decoder, step=self._best_step,
        num_active=self._best_active, **posterior_parts)
    self.best_manager = tf.train.CheckpointManager(
        self.best_checkpoint, os.path.join(workdir, BEST_DIR), max_to_keep=1)

    self.trace_count = 0
    step_fn = tf.function(self._step, jit_compile=cfg.xla)
    self._compiled_step = step_fn
    self.train_steps = tf.function(self._train_steps)

  # ------------------------------------------------------------ inner loop
  def _noise(self, x, step=None, batch_size=None):
    """The method's random draws for the step taken at the current `self.step`.

    A dict of tensors (`Method.step_noise`; 'z': [S, B, M, D] for every
    method), a pure function of (seed, step), so a resumed run draws the same
    noise. `step` and `batch_size` (the global B) replace `self.step` and x's
    batch under a strategy, where every replica draws the global batch's noise
    and keeps its own rows.
    """
    step = self.step if step is None else step
    batch = tf.shape(x)[0] if batch_size is None else batch_size
    return self.method.step_noise(tf.stack([tf.cast(self.cfg.seed, tf.int64), step]), batch)

  def _batch_mean(self, values):
    """Mean of per-example values [B, ...] over the global batch.

    Without a strategy, tf.reduce_mean (the original code). Under one, this
    replica's sum divided by the global batch size: summed over replicas by
    the gradient all-reduce, that is the global mean.
    """
    if not self.dist.distributed:
      return tf.reduce_mean(values)
    return tf.reduce_sum(values) / self.cfg.batch_size

  def _step(self, x, num_active, trainable_from, noise=None):
    """One training step of cfg.method.

    Args:
      x: [B, P] binary images.
      num_active, trainable_from: int32 scalars.
      noise: the step's draws (`_noise`), or None to draw them here. The
        training loop draws them outside this function: XLA's CPU
        random-number code took a third of the step when compiled into it
        (README, "Performance").
    Returns:
      dict of scalar and [M] metrics.
    """
    grads, terms = self._gradients(x, num_active, trainable_from, noise)
    return self._apply(grads, terms, self._frozen(trainable_from))

  def _frozen(self, trainable_from):
    return tf.range(self.cfg.num_components) < trainable_from  # [M]

  def _gradients(self, x, num_active, trainable_from, noise=None):
    """One step's gradients (aligned with all_vars, None where a loss does not reach) and terms.

    Arguments as `_step`. Under a strategy, x and the noise are this
    replica's rows and the losses are scaled to the global batch (`_batch_mean`).
    """
    self.trace_count += 1  # Python side effect: runs only while tracing.
    if noise is None:
      noise = self._noise(x)
    return self.method.gradients(x, num_active, self._frozen(trainable_from), noise,
                                 self._batch_mean)

  def _apply(self, grads, terms, frozen):
    """Applies one step's gradients (aligned with all_vars) and returns its metrics."""
    cfg = self.cfg
    # A loss that does not reach a variable (iwae's eps head: one encoder, eps_1 = 1).
    grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, self.all_vars)]
    # Only freeze_earlier ever freezes a component (trainable_from > 0); other
    # schedules skip the copy-and-restore, a pass over every encoder weight.
    freezes = cfg.schedule == 'freeze_earlier'
    before = [tf.identity(v) for v in self._sliced_vars] if freezes else []
    # Every gradient and metric is computed before any variable changes. Without
    # this barrier the graph may run a backward-pass read of a variable after the
    # optimizer has written it (seen: savae/vae_svi updates differing run to run).
    # (Under a strategy the Keras optimizer all-reduces, i.e. sums, the gradients first.)
    computed = [t for t in tf.nest.flatten(terms) if t is not None]  # optional terms: None
    with tf.control_dependencies(grads + computed + before):
      self.optimizer.apply_gradients(zip(grads, self.all_vars))
    alpha = tf.exp(terms.log_alpha)
    if self.dist.distributed:
      if freezes:
        self._restore_frozen_slices(before, frozen)
      # This replica's share of the global batch means; `_replica_step`'s caller sums them.
      per_batch = lambda v: tf.reduce_sum(v, 0) / self.cfg.batch_size
      return {
          'mixture_elbo': per_batch(terms.mixture_elbo),
          'component_objective': per_batch(terms.component_objective),  # [M]
          'component_elbo': per_batch(terms.component_elbo),  # [M]
          'mixture_weights': per_batch(alpha),  # [M]
          'weight_entropy': per_batch(posterior.weight_entropy(terms.log_alpha)),
      }
    for var, old in zip(self._sliced_vars, before):
      mask = tf.reshape(frozen, [-1] + [1] * (len(var.shape) - 1))
      var.assign(tf.where(mask, old, var))
    self.step.assign_add(1)
    return {
        'mixture_elbo': tf.reduce_mean(terms.mixture_elbo),
        'component_objective': tf.reduce_mean(terms.component_objective, 0),  # [M]
        'component_elbo': tf.reduce_mean(terms.component_elbo, 0),  # [M]
        'mixture_weights': tf.reduce_mean(alpha, 0),  # [M]
        'weight_entropy': tf.reduce_mean(posterior.weight_entropy(terms.log_alpha)),
    }

  def _restore_frozen_slices(self, before, frozen):
    """freeze_earlier under a strategy: puts back the frozen slices on every replica's copy.

    A mirrored variable is written in a cross-replica context (merge_call), one
    update per device.
    """
    def restore(strategy, before, frozen):
      for var, old in zip(self._sliced_vars, before):
        def update(v, o, f):
          return v.assign(tf.where(tf.reshape(f, [-1] + [1] * (len(v.shape) - 1)), o, v))
        strategy.extended.update(getattr(var, 'value', var), update, args=(old, frozen),
                                 group=False)

    tf.distribute.get_replica_context().merge_call(restore, args=(before, frozen))

  def _train_steps(self, iterator, num_steps, num_active, trainable_from):
    """Runs num_steps steps; returns metrics averaged over them and a finiteness flag."""
    x = next(iterator)
    totals = self._compiled_step(x, num_active, trainable_from, noise=self._noise(x))
    for _ in tf.range(num_steps - 1):
      x = next(iterator)
      metrics = self._compiled_step(x, num_active, trainable_from, noise=self._noise(x))
      totals = {k: totals[k] + metrics[k] for k in totals}
    return {k: v / tf.cast(num_steps, v.dtype) for k, v in totals.items()}

  def _replica_step(self, x, num_active, trainable_from, step):
    """One step on one replica: x is its [B / R, P] block of global batch `step`."""
    batch = self.cfg.batch_size
    noise = {k: distribute.replica_rows(v, batch, axis=self.method.noise_batch_axes[k])
             for k, v in self._noise(x, step, batch).items()}  # e.g. z: [S, B/R, M, D]
    grads, terms = self._compiled_gradients(x, num_active, trainable_from, noise)
    return self._apply(grads, terms, self._frozen(trainable_from))

  def _distributed_train_steps(self, iterator, num_steps, num_active, trainable_from):
    """`_train_steps` under a strategy: iterator yields per-replica blocks of each global batch."""
    strategy = self.dist.strategy
    first_step = self.step.read_value()

    def one_step(i):
      per_replica = strategy.run(self._replica_step,
                                 args=(next(iterator), num_active, trainable_from, first_step + i))
      return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
              for k, v in per_replica.items()}

    totals = one_step(tf.constant(0, tf.int64))
    for i in tf.range(tf.constant(1, tf.int64), tf.cast(num_steps, tf.int64)):
      metrics = one_step(i)
      totals = {k: totals[k] + metrics[k] for k in totals}
    self.step.assign_add(tf.cast(num_steps, tf.int64))
    return {k: v / tf.cast(num_steps, v.dtype) for k, v in totals.items()}

  # ------------------------------------------------------------ outer loop
  def restore_latest(self, log: Callable[[str], None] = print) -> Optional[str]:
    """Restores the newest readable checkpoint; returns its path or None.

    Candidates are the checkpoints the manager lists and any other `ckpt-<step>`
    in its directory (a lost or garbled `checkpoint` state file), newest step
    first. One that cannot be read whole (a truncated or garbage .index or .data
    file, a missing file) is skipped with a `warning:` line through `log`, and
    the one before it is tried.

    Args:
      log: receives one warning line per skipped checkpoint.
    Returns:
      The restored checkpoint's path, or None if the directory has none.
    Raises:
      UserError: there are checkpoints, but none is readable.
    """
    skipped = []
    for path in _checkpoint_candidates(self.manager):
      problem = checkpoint_problem(path)
      if problem is None:
        try:
          self.checkpoint.restore(path).assert_existing_objects_matched()
        except Exception as e:  # pylint: disable=broad-except  (see checkpoint_problem)
          problem = _one_line_error(e)
      if problem is None:
        return path
      log(f'warning: checkpoint {path} is unreadable ({problem}); trying the one before it')
      skipped.append(os.path.basename(path))
    if skipped:
      raise errors.UserError(
          f'no readable checkpoint in {self.manager.directory} (tried {", ".join(skipped)}); '
          'move that directory away to start the run afresh')
    return None

  def activate(self, num_active: int) -> None:
    """Sets the active-component count; with warm_start the new component copies the newest."""
    previous = int(self.num_active.numpy())
    self.num_active.assign(num_active)
    if self.cfg.warm_start and num_active == previous + 1 and previous >= 1:
      for var in self.encoder.component_variables:
        value = var.numpy()
        value[previous] = value[previous - 1]
        var.assign(value)

  def num_parameters(self, encoder_only: bool = False) -> int:
    """Trainable parameters of the posterior (encoders, extra parts) and, unless encoder_only, the decoder."""
    return self.method.num_parameters(encoder_only)

  def trainable_from(self) -> int:
    """Components below this index are frozen (freeze_earlier only)."""
    if self.cfg.schedule == 'freeze_earlier':
      return int(self.num_active.numpy()) - 1
    return 0

  def save(self, which: str, step: int, what: str) -> str:
    """Saves the 'latest' or 'best' checkpoint at `step`; returns the chief's path.

    The chief writes into the workdir (`_save_checkpoint`: a failed write is one
    line). Another worker of a multi-worker run saves too, as every worker
    must, into a temporary directory that is deleted at once.
    """
    manager, checkpoint = ((self.manager, self.checkpoint) if which == 'latest' else
                           (self.best_manager, self.best_checkpoint))
    if self.dist.is_chief:
      return _save_checkpoint(manager, step, what)
    with self.dist.write_dir(manager.directory) as tmp:
      tf.train.CheckpointManager(checkpoint, tmp, max_to_keep=1).save(checkpoint_number=step)
    return os.path.join(manager.directory, f'ckpt-{step}')


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 60}m{seconds % 60:02d}s' if seconds >= 60 else f'{seconds}s'


def _read_history(path: str, up_to_step: int) -> List[Dict]:
  """The history entries up to `up_to_step`; a damaged file is one line, not a traceback."""
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      history = json.load(f)
    return [h for h in history if h['step'] <= up_to_step]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise errors.UserError(
        f'unreadable {path} ({_one_line_error(e)}); restore it or move it away (the run then '
        'resumes with the history of later epochs only)') from None


def _one_line_error(e: BaseException) -> str:
  """An exception as one short line, without TF's `{{function_node ...}}` and `[Op:...]` noise."""
  text = e.message if isinstance(e, tf.errors.OpError) else (
      getattr(e, 'strerror', None) or str(e) or type(e).__name__)
  text = re.sub(r'\{\{[^}]*\}\}|\[Op:[^\]]*\]', '', str(text))
  return ' '.join(text.split())[:300]


def checkpoint_problem(path: str) -> Optional[str]:
  """Why the checkpoint at `path` (a prefix such as .../ckpt-8) cannot be read, or None.

  Reads every tensor: the bundle reader checks each one's checksum, so garbage
  and truncated .data files are caught as well as bad .index files.
  """
  try:
    reader = tf.train.load_checkpoint(path)
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  # A damaged file fails in many ways: tf.errors.DataLossError (checksum),
  # OpError (not an sstable), NotFoundError, and plain IndexError / ValueError
  # from the Python reader on a truncated file. All mean "unreadable".
  except Exception as e:  # pylint: disable=broad-except
    return _one_line_error(e)
  return None


def _checkpoint_candidates(manager: tf.train.CheckpointManager) -> List[str]:
  """Checkpoint prefixes to try, newest step first: the manager's list and any others on disk."""
  paths = {os.path.basename(p): p for p in manager.checkpoints}
  for index in glob.glob(os.path.join(glob.escape(manager.directory), 'ckpt-*.index')):
    prefix = index[:-len('.index')]
    paths.setdefault(os.path.basename(prefix), prefix)

  def number(name):
    tail = name.rsplit('-', 1)[-1]
    return int(tail) if tail.isdigit() else -1

  return [paths[name] for name in sorted(paths, key=number, reverse=True)]


def _save_checkpoint(manager: tf.train.CheckpointManager, step: int, what: str) -> str:
  """manager.save(step); a failed write is one line, and the previous checkpoint stays latest.

  TensorFlow writes a checkpoint to `ckpt-<step>_temp/` and records it in the
  state file only once it is complete, so a failed write (disk full, quota)
  leaves the previous latest checkpoint in place; the half-written files are
  removed here.
  """
  try:
    return manager.save(checkpoint_number=step)
  except (tf.errors.OpError, OSError) as e:
    prefix = os.path.join(manager.directory, f'ckpt-{step}')
    shutil.rmtree(prefix + '_temp', ignore_errors=True)
    for path in glob.glob(glob.escape(prefix) + '.*'):
      with contextlib.suppress(OSError):
        os.remove(path)
    raise errors.UserError(
        f'cannot write the {what} at step {step} ({_one_line_error(e)}); '
        f'{manager.latest_checkpoint or "no earlier checkpoint"} is kept; free space (or fix '
        'permissions) and rerun the same command to resume') from None


def _write_json_or_fail(path: str, value, keeps: Optional[str]) -> None:
  """config.write_json_atomic with a one-line error naming the checkpoint that is kept."""
  try:
    config_lib.write_json_atomic(path, value)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(path + '.tmp')
    raise errors.UserError(
        f'cannot write {path} ({_one_line_error(e)}); {keeps or "no checkpoint"} is kept; free '
        'space (or fix permissions) and rerun the same command to resume') from None


def _checkpoint_bytes(trainer: 'Trainer') -> int:
  """Bytes of the variables in one training checkpoint (networks and optimizer)."""
  variables = {id(v): v for v in list(trainer.all_vars) + list(trainer.optimizer.variables)}
  return sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in variables.values())


def _check_free_space(trainer: 'Trainer', workdir: str) -> None:
  """Fails with one line, before training, if workdir's disk cannot hold the checkpoints.

  Needs room for the checkpoints kept (plus one being written) and best/, less
  what those directories already hold, plus a margin; at least one checkpoint.
  """
  ckpt = _checkpoint_bytes(trainer)
  best = sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in trainer.all_vars)
  kept = getattr(trainer.manager, '_max_to_keep', None) or 3
  existing = 0
  for sub in (CHECKPOINT_DIR, BEST_DIR):
    for root, _, files in os.walk(os.path.join(workdir, sub)):
      existing += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  needed = max((kept + 1) * ckpt + best - existing, ckpt) + _FREE_SPACE_MARGIN_BYTES
  free = shutil.disk_usage(workdir).free
  if free < needed:
    mib = lambda b: f'{b / 2**20:.1f} MiB'
    raise errors.UserError(
        f'not enough free space in {workdir}: {mib(free)} free, the run needs about '
        f'{mib(needed)} ({kept} checkpoints of {mib(ckpt)} kept plus one being written, '
        'best/ and a margin); free space or choose another --workdir')


class _PreemptionGuard:
  """Turns SIGTERM into a request that the training loop answers between chunks.

  Installed only in the main thread (Python delivers signals there) and only for
  the `with` block; the previous handler is put back afterwards. A second
  SIGTERM does nothing more; SIGKILL is always safe (resuming redoes at most an
  epoch).
  """

  def __init__(self):
    self.requested = False
    self.requested_at = None  # time.monotonic() of the first SIGTERM
    self._installed = False
    self._previous = None

  def _handle(self, signum, frame):
    del signum, frame
    if not self.requested:
      self.requested, self.requested_at = True, time.monotonic()

  def __enter__(self) -> '_PreemptionGuard':
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    return self

  def __exit__(self, *exc_info) -> None:
    if self._installed:
      # None: the previous handler was not set from Python; the default is the closest.
      signal.signal(signal.SIGTERM,
                    signal.SIG_DFL if self._previous is None else self._previous)
      self._installed = False


@contextlib.contextmanager
def _op_determinism(enabled: bool):
  """TensorFlow op determinism for the block if `enabled`; the previous setting afterwards."""
  # Reading and undoing the setting has no public API; enabling it has.
  from tensorflow.python.framework import config as tf_config  # pylint: disable=g-import-not-at-top
  turn_on = enabled and not tf_config.is_op_determinism_enabled()
  if turn_on:
    tf.config.experimental.enable_op_determinism()
  try:
    yield
  finally:
    if turn_on:
      tf_config.disable_op_determinism()


def _write_partial_epoch(workdir: str, step: int, sums: Dict, count: int, seconds: float) -> None:
  """Saves the running metric sums of an epoch interrupted at `step` (exact float values)."""
  sums = {k: {'dtype': np.asarray(v).dtype.name, 'value': np.asarray(v).tolist()}
          for k, v in sums.items()}
  _write_json_or_fail(os.path.join(workdir, PARTIAL_EPOCH_FILE),
                      {'step': step, 'count': count, 'epoch_seconds': seconds, 'sums': sums}, None)


def _read_partial_epoch(workdir: str, step: int):
  """(sums, count, seconds) saved by an interruption at `step`, or None.

  Only the epoch's history entry depends on it: a missing, stale or unreadable
  file gives an entry averaged over the resumed part of the epoch.
  """
  path = os.path.join(workdir, PARTIAL_EPOCH_FILE)
  try:
    with open(path) as f:
      saved = json.load(f)
    if saved['step'] != step:
      return None
    sums = {k: np.asarray(v['value'], dtype=v['dtype']) for k, v in saved['sums'].items()}
    return sums, int(saved['count']), float(saved['epoch_seconds'])
  except (OSError, ValueError, KeyError, TypeError):
    return None



@dataclasses.dataclass
class TrainResult:
  trainer: Trainer
  history: List[Dict]
  train_seconds: float
  steps: int
  splits: data_sources.Splits
  ran_steps: int = 0  # optimisation steps taken by this call (0: nothing left to do)


def check_workdir(workdir: str) -> None:
  """Fails fast with a one-line error if workdir cannot be created or written.

  (config.check_workdir; launchers call it before TensorFlow loads, `train`
  again before any work, and `train` checks the free space once the size of a
  checkpoint is known.)
  """
  config_lib.check_workdir(workdir)


def train(cfg: config_lib.Config, workdir: str, *,
          load_data: Optional[Callable] = None,
          make_networks: Optional[Callable] = None,
          log: Callable[[str], None] = print,
          stop_after_steps: Optional[int] = None) -> TrainResult:
  """Trains (or resumes) a run in `workdir`.

  Args:
    cfg: validated config.
    workdir: run directory; holds config.json, checkpoints/, best/, history.json,
      summaries/. An existing run with a different config is refused.
    load_data: (data_dir, train_examples=..) -> data.Splits (injectable for tests);
      None: cfg.dataset's loader (`builders.load_data_fn`).
    make_networks: builds (encoder, decoder) like `networks.build_networks`;
      None: cfg.network's networks for cfg.dataset (`builders.make_networks_fn`).
    log: receives progress lines.
    stop_after_steps: stop (after checkpointing) once the global step reaches
      this value; for tests of interruption and resumption.
  Returns:
    TrainResult with the trainer restored to the selected (best validation) state.
  Raises:
    UserError: bad workdir, config mismatch, data problems, no room for the
      checkpoints, a failed checkpoint or history write (the previous
      checkpoint is kept), no readable checkpoint; a batch size the replicas
      do not divide; a strategy that cannot start (no TPU); under
      multi_worker, another worker lost mid-run.
    TrainingDiverged: non-finite loss (the last good checkpoint is kept).
    Preempted: SIGTERM arrived (main thread only; under multi_worker on any
      worker); the current chunk of at most MAX_CHUNK_STEPS steps was
      finished and checkpointed, with the epoch's running metrics, so that
      rerunning resumes with the same history as an uninterrupted run. The
      previous SIGTERM handler is restored on return.
  """
  cfg.validate()
  check_workdir(workdir)
  # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs anything else.
  dist = distribute.get(cfg.strategy)
  with _PreemptionGuard() as preemption, _op_determinism(cfg.deterministic):
    try:
      return _train(cfg, workdir, preemption, dist, load_data=load_data,
                    make_networks=make_networks, log=log, stop_after_steps=stop_after_steps)
    except _LOST_PEER_ERRORS as e:
      if not dist.multi_worker:
        raise
      # Another worker died (SIGKILL, a crash, a lost machine): the collective failed.
      latest = tf.train.latest_checkpoint(os.path.join(workdir, CHECKPOINT_DIR))
      raise errors.UserError(
          f'lost contact with another worker ({type(e).__name__} in a collective operation: '
          'a worker was killed, crashed or is unreachable); checkpoint '
          f'{latest or "(none)"} is kept; restart every worker with the same command to '
          'resume') from None


# Config fields that only measure (time-to-quality): a run may resume with other values.
_MEASUREMENT_FIELDS = ('strategy', 'valid_log_likelihood_every', 'valid_log_likelihood_examples',
                       'valid_log_likelihood_samples')

# What a collective op of MultiWorkerMirroredStrategy raises when a peer is gone.
_LOST_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.CancelledError,
                     tf.errors.AbortedError, tf.errors.DeadlineExceededError)


def _train(cfg: config_lib.Config, workdir: str, preemption: _PreemptionGuard,
           dist: distribute.Distribution, *,
           load_data: Callable, make_networks: Callable, log: Callable[[str], None],
           stop_after_steps: Optional[int]) -> TrainResult:
  """The body of `train`, with SIGTERM turned into `preemption.requested`."""
  config_file = config_lib.config_path(workdir)
  if os.path.exists(config_file):
    previous = config_lib.Config.load(config_file)
    # The strategy may change between runs: it changes how the steps run, not what they compute.
    # So may the time-to-quality measurements (valid_log_likelihood_*): they read, never train.
    if previous.replace(**{k: getattr(cfg, k) for k in _MEASUREMENT_FIELDS}) != cfg:
      changed = sorted(k for k, v in cfg.to_dict().items() if previous.to_dict().get(k) != v)
      raise errors.UserError(
          f'{workdir} holds a run with a different config (fields {", ".join(changed)}); '
          'use a new --workdir or the same flags to resume')
  load_data = load_data or builders.load_data_fn(cfg)
  splits = load_data(cfg.data_dir, train_examples=cfg.train_examples or None)
  if cfg.batch_size % dist.num_replicas:
    raise errors.UserError(
        f'batch_size={cfg.batch_size} is not divisible by the {dist.num_replicas} replicas of '
        f'--strategy={cfg.strategy}; choose a multiple of {dist.num_replicas} (the global batch '
        'is split evenly)')
  if dist.is_chief:
    cfg.save(config_file)

  spe = data_lib.steps_per_epoch(len(splits.train), cfg.batch_size)
  if spe < 1:
    raise errors.UserError(
        f'batch_size={cfg.batch_size} is larger than the {len(splits.train)} training examples')
  total_steps = cfg.epochs * spe
  if cfg.schedule != 'simultaneous' and cfg.last_activation_epoch() >= cfg.epochs:
    log(f'warning: with epochs={cfg.epochs} and epochs_per_component={cfg.epochs_per_component} '
        f'only {num_active_at(cfg, total_steps - 1, spe)} of {cfg.num_components} components '
        'will become active')

  trainer = Trainer(cfg, workdir, make_networks=make_networks, num_pixels=splits.train.shape[1],
                    distribution=dist)
  _check_free_space(trainer, workdir)
  restored = trainer.restore_latest(log=log)
  step = int(trainer.step.numpy())
  history = _read_history(os.path.join(workdir, HISTORY_FILE), step)
  if restored:
    log(f'resumed from {restored}: step {step}, {int(trainer.num_active.numpy())} active components')
  valid_ds = data_lib.make_eval_dataset(splits.valid, batch_size=cfg.eval_batch_size,
                                        seed=cfg.seed + 1, binarization=cfg.binarization)
  # One evaluator for the whole run: a new one per epoch would retrace (and
  # XLA-compile) the validation step every epoch.
  # savae / vae_svi are validated (and selected) with their refined posterior.
  # Under a strategy, sharded across the replicas (float64 sums, reduced exactly).
  valid_evaluator = likelihood.Evaluator(trainer.method, xla=cfg.xla,
                                         strategy=dist.strategy if dist.distributed else None)
  ll_images = splits.valid[:cfg.valid_log_likelihood_examples]
  valid_ll_ds = (data_lib.make_eval_dataset(ll_images, batch_size=cfg.eval_batch_size,
                                            seed=cfg.seed + 3, binarization=cfg.binarization)
                 if cfg.valid_log_likelihood_every else None)
  writer = (tf.summary.create_file_writer(os.path.join(workdir, SUMMARY_DIR)) if dist.is_chief
            else tf.summary.create_noop_writer())
  train_seconds = sum(h.get('epoch_seconds', 0.0) for h in history)
  start_epoch = step // spe
  first_step = step
  wall_start = time.perf_counter()
  num_params = trainer.num_parameters()
  if step < total_steps:
    replicas = f'{dist.num_replicas} replica{"s" if dist.num_replicas != 1 else ""}'
    worker = f', worker {dist.task_id}' if dist.multi_worker else ''
    where = f' on {replicas} ({cfg.strategy}{worker})' if dist.distributed else ''
    log(f'training {cfg.method} (M={cfg.num_components}, {num_params:,} parameters) for '
        f'{cfg.epochs} epochs x {spe} steps on {len(splits.train)} images{where}')

  for epoch in range(start_epoch, cfg.epochs):
    if stop_after_steps is not None and step >= stop_after_steps:
      break
    # Arrived during the last epoch's validation or save (on any worker: a collective).
    if dist.any_worker(preemption.requested):
      latest = (trainer.manager.latest_checkpoint if dist.is_chief else
                tf.train.latest_checkpoint(trainer.manager.directory))
      raise errors.Preempted(step, latest or '(none)')
    epoch_start = time.perf_counter()
    skip = step - epoch * spe
    dataset = _train_dataset(dist, splits.train, cfg, epoch, skip)
    iterator = iter(dataset)
    epoch_end = (epoch + 1) * spe
    sums, count, carried_seconds = {}, 0, 0.0
    if skip and epoch == start_epoch:  # resumed mid-epoch: after SIGTERM, its running sums
      sums, count, carried_seconds = _read_partial_epoch(workdir, step) or (sums, count, 0.0)
    while step < epoch_end:
      want_active = num_active_at(cfg, step, spe)
      if want_active != int(trainer.num_active.numpy()):
        trainer.activate(want_active)
        log(f'step {step}: component {want_active} of {cfg.num_components} activated')
      boundary = next_activation_step(cfg, step, spe)
      chunk_end = min(epoch_end, boundary if boundary else epoch_end,
                      (step // MAX_CHUNK_STEPS + 1) * MAX_CHUNK_STEPS)
      if stop_after_steps is not None:
        chunk_end = min(chunk_end, max(stop_after_steps, step + 1))
      n = chunk_end - step
      metrics = trainer.train_steps(
          iterator, tf.constant(n, tf.int32), trainer.num_active.read_value(),
          tf.constant(trainer.trainable_from(), tf.int32))
      metrics = {k: v.numpy() for k, v in metrics.items()}
      bad = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))
      # Parameters too (a non-finite gradient under a finite loss): checked here,
      # once per chunk, rather than by a gradient norm in every compiled step.
      if not bad and not all(np.all(np.isfinite(v.numpy())) for v in trainer.all_vars):
        bad = ['parameters']
      if bad:
        raise errors.TrainingDiverged(
            f'non-finite {", ".join(bad)} between steps {step} and {chunk_end}; stopped without '
            f'saving, last good checkpoint {trainer.manager.latest_checkpoint or "(none)"} kept; '
            'try a lower --learning_rate')
      for k, v in metrics.items():
        sums[k] = sums.get(k, 0.0) + v * n
      count += n
      step = chunk_end
      if dist.any_worker(preemption.requested) and step < epoch_end:
        # The epoch's history entry is written when it ends (after resuming), from
        # the sums saved here, as if it had not been interrupted.
        if dist.is_chief:
          _write_partial_epoch(workdir, step, sums, count,
                               carried_seconds + time.perf_counter() - epoch_start)
        path = trainer.save('latest', step, 'checkpoint')
        writer.flush()
        raise errors.Preempted(step, path)
      if stop_after_steps is not None and step >= stop_after_steps:
        break
    epoch_seconds = carried_seconds + time.perf_counter() - epoch_start
    train_seconds += epoch_seconds
    means = {k: v / max(count, 1) for k, v in sums.items()}
    entry = {'epoch': epoch + 1 if step == epoch_end else epoch + count / spe, 'step': step,
             'num_active': int(trainer.num_active.numpy()), 'epoch_seconds': epoch_seconds,
             'train_mixture_elbo': float(means.get('mixture_elbo', np.nan)),
             'component_elbo': [float(v) for v in np.atleast_1d(means.get('component_elbo', []))],
             'component_objective': [float(v) for v in np.atleast_1d(means.get('component_objective', []))],
             'mixture_weights': [float(v) for v in np.atleast_1d(means.get('mixture_weights', []))],
             'weight_entropy': float(means.get('weight_entropy', np.nan))}
    completed = step == epoch_end
    is_best = False
    if completed and ((epoch + 1) % cfg.validation_every == 0 or epoch + 1 == cfg.epochs):
      val = likelihood.evaluate_elbo(valid_evaluator, valid_ds, trainer.num_active.read_value(),
                                     seed=cfg.seed + 2)
      entry['valid_mixture_elbo'] = val['mixture_elbo']
      if not math.isfinite(val['mixture_elbo']):
        raise errors.TrainingDiverged(
            f'non-finite validation ELBO at step {step}; last good checkpoint '
            f'{trainer.manager.latest_checkpoint or "(none)"} kept')
      if val['mixture_elbo'] > trainer.best_validation.numpy():
        trainer.best_validation.assign(val['mixture_elbo'])
        trainer._best_step.assign(step)
        trainer._best_active.assign(trainer.num_active)
        trainer.save('best', step, 'selected (best) checkpoint')
        is_best = True
    entry['train_seconds'] = train_seconds
    if completed and valid_ll_ds is not None and (
        (epoch + 1) % cfg.valid_log_likelihood_every == 0 or epoch + 1 == cfg.epochs):
      entry['valid_log_likelihood'] = likelihood.mean_log_likelihood(
          valid_evaluator, valid_ll_ds, trainer.num_active.read_value(),
          num_samples=cfg.valid_log_likelihood_samples, chunk=cfg.eval_chunk,
          seed=cfg.seed + 4).mean
    with writer.as_default(step=step):
      tf.summary.scalar('train/mixture_elbo', entry['train_mixture_elbo'])
      tf.summary.scalar('train/weight_entropy', entry['weight_entropy'])
      tf.summary.scalar('train/num_active', entry['num_active'])
      for m, (o, e, w) in enumerate(zip(entry['component_objective'], entry['component_elbo'],
                                        entry['mixture_weights'])):
        if m < entry['num_active']:
          tf.summary.scalar(f'component_{m + 1}/objective', o)
          tf.summary.scalar(f'component_{m + 1}/elbo', e)
          tf.summary.scalar(f'component_{m + 1}/weight', w)
      if 'valid_mixture_elbo' in entry:
        tf.summary.scalar('valid/mixture_elbo', entry['valid_mixture_elbo'])
      if 'valid_log_likelihood' in entry:
        tf.summary.scalar('valid/log_likelihood', entry['valid_log_likelihood'])
    writer.flush()
    history.append(entry)
    # History first: a kill between the two leaves an entry past the checkpoint,
    # which _read_history drops on resume (the other order would lose the entry).
    if dist.is_chief:
      _write_json_or_fail(os.path.join(workdir, HISTORY_FILE), history,
                          trainer.manager.latest_checkpoint)
    trainer.save('latest', step, 'checkpoint')
    if dist.is_chief:
      with contextlib.suppress(OSError):  # the sums of an interrupted epoch are in history now
        os.remove(os.path.join(workdir, PARTIAL_EPOCH_FILE))
    # ETA from wall time per epoch of this call (training, validation and checkpoints).
    wall_per_epoch = (time.perf_counter() - wall_start) / max((step - first_step) / spe, 1e-9)
    remaining = (total_steps - step) / spe * wall_per_epoch
    val_text = (f' valid ELBO {entry["valid_mixture_elbo"]:.2f}{" *" if is_best else ""}'
                if 'valid_mixture_elbo' in entry else '')
    if 'valid_log_likelihood' in entry:
      val_text += f' valid log p(x) {entry["valid_log_likelihood"]:.2f}'
    log(f'epoch {epoch + 1}/{cfg.epochs} step {step} active {entry["num_active"]}/'
        f'{cfg.num_components} train ELBO {entry["train_mixture_elbo"]:.2f}{val_text} '
        f'{epoch_seconds:.1f}s ETA {_format_seconds(remaining)}')

  finished = step >= total_steps
  dist.barrier()  # other workers read best/ once the chief has written it
  best = (trainer.best_manager.latest_checkpoint if dist.is_chief else
          tf.train.latest_checkpoint(trainer.best_manager.directory))
  if finished and best:
    _restore_or_fail(trainer.best_checkpoint, best)
    trainer.num_active.assign(trainer._best_active)
  return TrainResult(trainer=trainer, history=history, train_seconds=train_seconds,
                     steps=step, splits=splits, ran_steps=step - first_step)


def _train_dataset(dist: distribute.Distribution, images, cfg: config_lib.Config, epoch: int,
                   skip: int):
  """Epoch `epoch`'s training batches from batch `skip` on, split per replica under a strategy.

  Under a strategy, each input pipeline (one per worker) yields, for every
  global batch, the blocks of its local replicas (`data.make_train_dataset`'s
  `slices`): replica r of R gets rows [r B/R, (r+1) B/R) with the same
  binarization as without a strategy, and resuming by step count stays exact.
  """
  def make(slices=None):
    return data_lib.make_train_dataset(
        images, batch_size=cfg.batch_size, seed=cfg.seed, epoch=epoch,
        binarization=cfg.binarization, skip_batches=skip, slices=slices)

  if not dist.distributed:
    return make()

  def dataset_fn(context: tf.distribute.InputContext):
    local = context.num_replicas_in_sync // context.num_input_pipelines
    return make((context.input_pipeline_id * local, local, context.num_replicas_in_sync))

  return dist.strategy.distribute_datasets_from_function(dataset_fn)


def restore_for_evaluation(workdir: str, *, which: str = 'best',
                           make_networks: Optional[Callable] = None,
                           num_pixels: Optional[int] = None,
                           log: Callable[[str], None] = print,
                           distribution: Optional[distribute.Distribution] = None):
  """Loads a run's networks for evaluation or export.

  Args:
    workdir: a run directory written by `train`.
    which: 'best' (the validation-selected state), 'latest' (the newest readable
      checkpoint, `Trainer.restore_latest`), or a checkpoint path.
    make_networks, num_pixels: as `Trainer`; None: what the run's config selects.
    log: receives warning lines (an unreadable latest checkpoint skipped).
    distribution: None (one device), or a strategy to create the networks under
      (for `likelihood.evaluate(..., strategy=...)`).
  Returns:
    (cfg, trainer, checkpoint_path) with trainer.num_active set to the restored count.
  Raises:
    UserError: no such checkpoint, or it is unreadable.
  """
  cfg = config_lib.Config.load(config_lib.config_path(workdir))
  trainer = Trainer(cfg, workdir, make_networks=make_networks, num_pixels=num_pixels,
                    distribution=distribution)
  if which == 'best':
    path = trainer.best_manager.latest_checkpoint
    if not path:
      raise errors.UserError(f'{workdir} has no selected (best) checkpoint yet; '
                             'finish an epoch of training first or pass --checkpoint=latest')
    _restore_or_fail(trainer.best_checkpoint, path)
    trainer.num_active.assign(trainer._best_active)
    trainer.step.assign(trainer._best_step)
  elif which == 'latest':
    path = trainer.restore_latest(log=log)
    if not path:
      raise errors.UserError(f'no checkpoint in {workdir}')
  else:
    path = which
    if not tf.io.gfile.exists(path + '.index'):
      raise errors.UserError(f'no checkpoint {which!r} in {workdir}')
    _restore_or_fail(trainer.checkpoint, path)
  return cfg, trainer, path


def _restore_or_fail(checkpoint: tf.train.Checkpoint, path: str) -> None:
  """checkpoint.restore(path) of a checkpoint read whole first; one line if it is unreadable."""
  problem = checkpoint_problem(path)
  if problem is None:
    try:
      checkpoint.restore(path).expect_partial()
    except Exception as e:  # pylint: disable=broad-except  (see checkpoint_problem)
      problem = _one_line_error(e)
  if problem is not None:
    raise errors.UserError(f'checkpoint {path} is unreadable ({problem})')
