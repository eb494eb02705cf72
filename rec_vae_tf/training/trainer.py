"""The compiled inner step of RME training (RME.md, "The four updates" and "Schedules").

Training is split along three modules of rec_vae_tf/training:
  * trainer.py (this module), the inner step: `Trainer` owns one run's
    networks, optimizer and checkpoint objects and `Trainer.train_steps`, a
    `tf.function` that runs N steps over a dataset iterator. Each step draws
    the method's noise (a pure function of seed and step), asks the method
    (rec_vae_tf.methods) for its gradients (each loss w.r.t. the variables it
    trains: for RME, sum_m J_m w.r.t. the encoders and the stratified mixture
    ELBO w.r.t. the decoder and the mixing weights) and applies them with one
    Adam optimizer. The step is optionally XLA-compiled and its arguments are
    tensors, so it traces once. Also here: `restore_for_evaluation`, and the
    recursion schedule of schedule.py (`num_active_at`, `next_activation_step`).
  * loop.py, the outer loop (Python): `train` and `TrainResult`, as a sequence
    of named actions over epochs and chunks: applying the recursion schedule
    (how many components are active), validation and model selection,
    checkpoints, TensorBoard summaries, progress lines, and the NaN/Inf guard.
  * runstate.py, the run's state on disk and its faults: the workdir layout,
    checkpoint reading and writing, history, the partial epoch, free space,
    SIGTERM and op determinism.

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

Faults (README, "Faults and preemption"): `restore_latest` skips an unreadable
checkpoint for the one before it, and a checkpoint that cannot be written or
read is one line naming what was kept (rec_vae_tf/training/runstate.py); the
outer loop answers SIGTERM between calls of `train_steps` (loop.py).
"""

import os
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from rec_vae_tf.models import builders
from rec_vae_tf import config as config_lib
from rec_vae_tf.training import distribute
from rec_vae_tf.training import runstate
from rec_vae_tf import errors
from rec_vae_tf import methods
from rec_vae_tf.models import posterior


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
    # The best validation value of cfg.selection (ELBO or log p(x)) so far.
    self.best_validation = tf.Variable(-np.inf, dtype=tf.float64, trainable=False,
                                       name='best_validation')
    posterior_parts = self.method.modules  # e.g. {'flow': ...}
    self.checkpoint = tf.train.Checkpoint(
        encoder=self.encoder, decoder=self.decoder, optimizer=self.optimizer,
        step=self.step, num_active=self.num_active, best_validation=self.best_validation,
        **posterior_parts)
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, os.path.join(workdir, runstate.CHECKPOINT_DIR), max_to_keep=3)
    # The selected model: networks and the state they were selected in.
    self.best_step = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.best_active = tf.Variable(1, dtype=tf.int32, trainable=False)
    self.best_checkpoint = tf.train.Checkpoint(
        encoder=self.encoder, decoder=self.decoder, step=self.best_step,
        num_active=self.best_active, **posterior_parts)
    self.best_manager = tf.train.CheckpointManager(
        self.best_checkpoint, os.path.join(workdir, runstate.BEST_DIR), max_to_keep=1)

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

  # ------------------------------------------------- state between calls
  def restore_latest(self, log: Callable[[str], None] = print) -> Optional[str]:
    """Restores the newest readable checkpoint; returns its path or None.

    Candidates are the checkpoints the manager lists and any other `ckpt-<step>`
    in its directory (a lost or garbled `checkpoint` state file), newest step
    first. One that cannot be read whole (a truncated or garbage .index or .data
    file, a missing file) is skipped with a `warning:` line through `log`, and
    the one before it is tried. A readable one whose variables do not fit the
    config (`runstate.checkpoint_mismatch`: another run's checkpoints copied
    here) stops the search: the ones before it are that run's too.

    Args:
      log: receives one warning line per skipped checkpoint.
    Returns:
      The restored checkpoint's path, or None if the directory has none.
    Raises:
      UserError: there are checkpoints, but none is readable; or the newest
        readable one does not match the config.
    """
    skipped = []
    for path in runstate.checkpoint_candidates(self.manager):
      problem = runstate.checkpoint_problem(path)
      if problem is None:
        mismatch = runstate.checkpoint_mismatch(self.checkpoint, path, complete=True)
        if mismatch is not None:
          raise runstate.mismatch_error(path, mismatch, config_lib.config_path(self.workdir))
        try:
          self.checkpoint.restore(path).assert_existing_objects_matched()
        except Exception as e:  # pylint: disable=broad-except  (see checkpoint_problem)
          problem = runstate.one_line_error(e)
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

    The chief writes into the workdir (`runstate.save_checkpoint`: a failed write is one
    line). Another worker of a multi-worker run saves too, as every worker
    must, into a temporary directory that is deleted at once.
    """
    manager, checkpoint = ((self.manager, self.checkpoint) if which == 'latest' else
                           (self.best_manager, self.best_checkpoint))
    if self.dist.is_chief:
      return runstate.save_checkpoint(manager, step, what)
    with self.dist.write_dir(manager.directory) as tmp:
      tf.train.CheckpointManager(checkpoint, tmp, max_to_keep=1).save(checkpoint_number=step)
    return os.path.join(manager.directory, f'ckpt-{step}')


def restore_for_evaluation(workdir: str, *, which: str = 'best',
                           make_networks: Optional[Callable] = None,
                           num_pixels: Optional[int] = None,
                           log: Callable[[str], None] = print,
                           distribution: Optional[distribute.Distribution] = None):
  """Loads a run's networks for evaluation or export.

  Args:
    workdir: a run directory written by `loop.train`.
    which: 'best' (the validation-selected state), 'latest' (the newest readable
      checkpoint, `Trainer.restore_latest`), or a checkpoint path.
    make_networks, num_pixels: as `Trainer`; None: what the run's config selects.
    log: receives warning lines (an unreadable latest checkpoint skipped).
    distribution: None (one device), or a strategy to create the networks under
      (for `likelihood.evaluate(..., strategy=...)`).
  Returns:
    (cfg, trainer, checkpoint_path) with trainer.num_active set to the restored count.
  Raises:
    UserError: no such checkpoint, it is unreadable, or it does not match the
      run's config (another run's checkpoint).
  """
  cfg = config_lib.Config.load(config_lib.config_path(workdir))
  trainer = Trainer(cfg, workdir, make_networks=make_networks, num_pixels=num_pixels,
                    distribution=distribution)
  if which == 'best':
    path = trainer.best_manager.latest_checkpoint
    if not path:
      raise errors.UserError(f'{workdir} has no selected (best) checkpoint yet; '
                             'finish an epoch of training first or pass --checkpoint=latest')
    runstate.restore_or_fail(trainer.best_checkpoint, path,
                             config_file=config_lib.config_path(workdir))
    trainer.num_active.assign(trainer.best_active)
    trainer.step.assign(trainer.best_step)
  elif which == 'latest':
    path = trainer.restore_latest(log=log)
    if not path:
      raise errors.UserError(f'no checkpoint in {workdir}')
  else:
    path = which
    if not tf.io.gfile.exists(path + '.index'):
      raise errors.UserError(f'no checkpoint {which!r} in {workdir}')
    # A path may be a best/ checkpoint, which has no optimizer.
    runstate.restore_or_fail(trainer.checkpoint, path, complete=False,
                             config_file=config_lib.config_path(workdir))
  return cfg, trainer, path
