"""The outer training loop (Python): `train`, as a sequence of named actions.

The compiled inner step (`Trainer.train_steps`, N steps per call) is in
rec_vae_tf/training/trainer.py; the run's state on disk and its faults
(checkpoints, history, the partial epoch, free space, SIGTERM) are in
rec_vae_tf/training/runstate.py. This module drives them:

  train
    _prepare_run          config check, data, trainer, resume, validation sets
    for each epoch:
      _stop_if_preempted  SIGTERM that arrived during the last validation or save
      _run_epoch
        _start_epoch                   its batches from the resumed step on
        repeat until the epoch ends:
          _activate_next_component     the recursion schedule
          _train_chunk, _check_finite  at most MAX_CHUNK_STEPS compiled steps
          _stop_preempted_mid_epoch    SIGTERM: checkpoint, partial sums, stop
        _epoch_entry                   the history entry of the epoch
        _validate                      validation ELBO
        _measure_valid_log_likelihood  validation log p(x) (time-to-quality)
        _select                        best/ checkpoint (cfg.selection)
        _write_summaries, _checkpoint_epoch, _log_progress
    _finish               the selected (best) state, TrainResult

Every action reads and advances one `_Run`, the state of this call of `train`.
Under multi_worker each worker takes the same actions in the same order: the
SIGTERM checks are collectives (`Distribution.any_worker`).
"""

import dataclasses
import math
import os
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

from rec_vae_tf import config as config_lib
from rec_vae_tf import errors
from rec_vae_tf.data import pipeline as data_lib
from rec_vae_tf.data import sources as data_sources
from rec_vae_tf.evaluation import likelihood
from rec_vae_tf.models import builders
from rec_vae_tf.training import distribute
from rec_vae_tf.training import runstate
from rec_vae_tf.training import schedule
from rec_vae_tf.training import workdir_lock
from rec_vae_tf.training import trainer as trainer_lib

# At most this many steps per call of the compiled loop (`train_steps`). The
# outer loop answers SIGTERM between calls, so this bounds the response time
# (about 0.4 s of training for the default RME run on this project's CPU);
# the cap cost no measurable speed (README, "Faults and preemption"). Chunks
# end at multiples of it, so a run resumed at a chunk end splits and sums its
# steps exactly as an uninterrupted run does.
MAX_CHUNK_STEPS = 100

# Config fields that only measure (time-to-quality): a run may resume with other values.
_MEASUREMENT_FIELDS = ('strategy', 'valid_log_likelihood_every', 'valid_log_likelihood_examples',
                       'valid_log_likelihood_samples')


@dataclasses.dataclass
class TrainResult:
  trainer: trainer_lib.Trainer
  history: List[Dict]
  train_seconds: float
  steps: int
  splits: data_sources.Splits
  ran_steps: int = 0  # optimisation steps taken by this call (0: nothing left to do)


@dataclasses.dataclass
class _Run:
  """One call of `train`: what its actions read, and the position they advance."""
  cfg: config_lib.Config
  workdir: str
  dist: distribute.Distribution
  preemption: runstate.PreemptionGuard
  log: Callable[[str], None]
  stop_after_steps: Optional[int]
  splits: data_sources.Splits
  steps_per_epoch: int
  total_steps: int
  trainer: trainer_lib.Trainer
  history: List[Dict]  # finished epochs' entries
  valid_ds: tf.data.Dataset
  valid_evaluator: likelihood.Evaluator
  valid_ll_ds: Optional[tf.data.Dataset]  # None: no validation log p(x)
  writer: tf.summary.SummaryWriter
  step: int  # the global step reached
  first_step: int  # the global step this call started from
  train_seconds: float  # of all epochs so far, previous calls' included
  wall_start: float  # time.perf_counter() at the start of this call's epochs

  def stop_reached(self) -> bool:
    """True once the step set by `stop_after_steps` (tests) is reached."""
    return self.stop_after_steps is not None and self.step >= self.stop_after_steps


@dataclasses.dataclass
class _Epoch:
  """The epoch in progress: its batches and the running sums of its chunks' metrics."""
  index: int  # 0-based
  end_step: int
  iterator: object
  started: float  # time.perf_counter() when this call started it
  sums: Dict  # metric name -> sum over steps of the chunk means times chunk sizes
  count: int  # steps summed
  carried_seconds: float  # spent on it before an interruption (a resumed epoch)

  def completed(self, step: int) -> bool:
    return step == self.end_step


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
    UserError: bad workdir, another process holding its lock
      (`workdir_lock.WorkdirInUse`), config mismatch, data problems, no room for the
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
  runstate.check_workdir(workdir)
  # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs anything else.
  dist = distribute.get(cfg.strategy)
  # One writer per run directory (the chief's, under multi_worker); nested under a launcher's.
  with (workdir_lock.hold(workdir, enabled=dist.is_chief),
        runstate.PreemptionGuard() as preemption,
        runstate.op_determinism(cfg.deterministic)):
    try:
      return _train(cfg, workdir, preemption, dist, load_data=load_data,
                    make_networks=make_networks, log=log, stop_after_steps=stop_after_steps)
    except runstate.LOST_PEER_ERRORS as e:
      if not dist.multi_worker:
        raise
      # Another worker died (SIGKILL, a crash, a lost machine): the collective failed.
      latest = tf.train.latest_checkpoint(os.path.join(workdir, runstate.CHECKPOINT_DIR))
      raise errors.UserError(
          f'lost contact with another worker ({type(e).__name__} in a collective operation: '
          'a worker was killed, crashed or is unreachable); checkpoint '
          f'{latest or "(none)"} is kept; restart every worker with the same command to '
          'resume') from None


def _train(cfg: config_lib.Config, workdir: str, preemption: runstate.PreemptionGuard,
           dist: distribute.Distribution, *,
           load_data: Callable, make_networks: Callable, log: Callable[[str], None],
           stop_after_steps: Optional[int]) -> TrainResult:
  """The body of `train`, with SIGTERM turned into `preemption.requested`."""
  run = _prepare_run(cfg, workdir, preemption, dist, load_data=load_data,
                     make_networks=make_networks, log=log, stop_after_steps=stop_after_steps)
  for epoch in range(run.step // run.steps_per_epoch, cfg.epochs):
    if run.stop_reached():
      break
    _stop_if_preempted(run)
    _run_epoch(run, epoch)
  return _finish(run)


# -------------------------------------------------------------- preparation
def _prepare_run(cfg: config_lib.Config, workdir: str, preemption: runstate.PreemptionGuard,
                 dist: distribute.Distribution, *,
                 load_data: Callable, make_networks: Callable, log: Callable[[str], None],
                 stop_after_steps: Optional[int]) -> _Run:
  """Checks the config against the workdir's, loads the data, builds the trainer and resumes."""
  _check_same_config(cfg, workdir)
  splits = _load_splits(cfg, dist, load_data, log)
  if dist.is_chief:
    cfg.save(config_lib.config_path(workdir))
  spe, total_steps = _steps(cfg, splits, log)

  trainer = trainer_lib.Trainer(cfg, workdir, make_networks=make_networks,
                                num_pixels=splits.train.shape[1], distribution=dist)
  runstate.check_free_space(trainer, workdir)
  restored = trainer.restore_latest(log=log)
  step = int(trainer.step.numpy())
  history = runstate.read_history(os.path.join(workdir, runstate.HISTORY_FILE), step)
  if restored:
    log(f'resumed from {restored}: step {step}, {int(trainer.num_active.numpy())} active '
        'components')
  valid_ds, valid_evaluator, valid_ll_ds = _validation_sets(cfg, splits, trainer, dist)
  writer = (tf.summary.create_file_writer(os.path.join(workdir, runstate.SUMMARY_DIR))
            if dist.is_chief else tf.summary.create_noop_writer())
  run = _Run(cfg=cfg, workdir=workdir, dist=dist, preemption=preemption, log=log,
             stop_after_steps=stop_after_steps, splits=splits, steps_per_epoch=spe,
             total_steps=total_steps, trainer=trainer, history=history, valid_ds=valid_ds,
             valid_evaluator=valid_evaluator, valid_ll_ds=valid_ll_ds, writer=writer,
             step=step, first_step=step,
             train_seconds=sum(h.get('epoch_seconds', 0.0) for h in history),
             wall_start=time.perf_counter())
  _log_start(run)
  return run


def _check_same_config(cfg: config_lib.Config, workdir: str) -> None:
  """Refuses a workdir that holds a run with a different config (measurements aside)."""
  config_file = config_lib.config_path(workdir)
  if os.path.exists(config_file):
    previous = config_lib.Config.load(config_file)
    # The strategy may change between runs: it changes how the steps run, not what they compute.
    # So may the time-to-quality measurements (valid_log_likelihood_*): they read, never
    # train; unless they select (selection = 'log_likelihood').
    free = _MEASUREMENT_FIELDS if cfg.selection == 'elbo' else ('strategy',)
    if previous.replace(**{k: getattr(cfg, k) for k in free}) != cfg:
      changed = sorted(k for k, v in dataclasses.asdict(cfg).items()
                       if getattr(previous, k) != v)
      raise errors.UserError(
          f'{workdir} holds a run with a different config (fields {", ".join(changed)}); '
          'use a new --workdir or the same flags to resume')


def _load_splits(cfg: config_lib.Config, dist: distribute.Distribution,
                 load_data: Optional[Callable], log: Callable[[str], None]) -> data_sources.Splits:
  """The run's data (`load_data`, else cfg.dataset's loader); the replicas must divide B."""
  load_data = load_data or builders.load_data_fn(cfg, log=log)
  splits = load_data(cfg.data_dir, train_examples=cfg.train_examples or None)
  if cfg.batch_size % dist.num_replicas:
    raise errors.UserError(
        f'batch_size={cfg.batch_size} is not divisible by the {dist.num_replicas} replicas of '
        f'--strategy={cfg.strategy}; choose a multiple of {dist.num_replicas} (the global batch '
        'is split evenly)')
  return splits


def _steps(cfg: config_lib.Config, splits: data_sources.Splits, log: Callable[[str], None]):
  """(steps per epoch, total steps); warns if the schedule activates fewer than M components."""
  spe = data_lib.steps_per_epoch(len(splits.train), cfg.batch_size)
  if spe < 1:
    raise errors.UserError(
        f'batch_size={cfg.batch_size} is larger than the {len(splits.train)} training examples')
  total_steps = cfg.epochs * spe
  if cfg.schedule != 'simultaneous' and cfg.last_activation_epoch() >= cfg.epochs:
    log(f'warning: with epochs={cfg.epochs} and epochs_per_component={cfg.epochs_per_component} '
        f'only {schedule.num_active_at(cfg, total_steps - 1, spe)} of {cfg.num_components} '
        'components will become active')
  return spe, total_steps


def _validation_sets(cfg: config_lib.Config, splits: data_sources.Splits,
                     trainer: trainer_lib.Trainer, dist: distribute.Distribution):
  """(validation ELBO batches, the run's evaluator, validation log p(x) batches or None)."""
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
  return valid_ds, valid_evaluator, valid_ll_ds


def _log_start(run: _Run) -> None:
  """The `training ...` line, unless the run is already finished."""
  cfg, dist = run.cfg, run.dist
  num_params = run.trainer.num_parameters()
  if run.step < run.total_steps:
    replicas = f'{dist.num_replicas} replica{"s" if dist.num_replicas != 1 else ""}'
    worker = f', worker {dist.task_id}' if dist.multi_worker else ''
    where = f' on {replicas} ({cfg.strategy}{worker})' if dist.distributed else ''
    run.log(f'training {cfg.method} (M={cfg.num_components}, {num_params:,} parameters) for '
            f'{cfg.epochs} epochs x {run.steps_per_epoch} steps on {len(run.splits.train)} '
            f'images{where}')


# -------------------------------------------------------------------- epochs
def _stop_if_preempted(run: _Run) -> None:
  """Raises Preempted if SIGTERM arrived (on any worker: a collective) since the last check.

  Called between epochs: a SIGTERM during the last epoch's validation or save.
  """
  if run.dist.any_worker(run.preemption.requested):
    manager = run.trainer.manager
    latest = (manager.latest_checkpoint if run.dist.is_chief else
              tf.train.latest_checkpoint(manager.directory))
    raise errors.Preempted(run.step, latest or '(none)')


def _run_epoch(run: _Run, epoch: int) -> None:
  """Trains epoch `epoch` from run.step in chunks, then validates, records and checkpoints it."""
  ep = _start_epoch(run, epoch)
  while run.step < ep.end_step:
    _activate_next_component(run)
    _train_chunk(run, ep)
    if run.dist.any_worker(run.preemption.requested) and run.step < ep.end_step:
      _stop_preempted_mid_epoch(run, ep)
    if run.stop_reached():
      break
  entry = _epoch_entry(run, ep)
  _validate(run, ep, entry)
  entry['train_seconds'] = run.train_seconds
  _measure_valid_log_likelihood(run, ep, entry)
  is_best = _select(run, entry)
  _write_summaries(run, entry)
  _checkpoint_epoch(run, entry)
  _log_progress(run, ep, entry, is_best)


def _start_epoch(run: _Run, epoch: int) -> _Epoch:
  """Epoch `epoch`'s batches from run.step on; a resumed epoch's sums from before SIGTERM."""
  started = time.perf_counter()
  spe = run.steps_per_epoch
  skip = run.step - epoch * spe
  iterator = iter(_train_dataset(run.dist, run.splits.train, run.cfg, epoch, skip))
  ep = _Epoch(index=epoch, end_step=(epoch + 1) * spe, iterator=iterator, started=started,
              sums={}, count=0, carried_seconds=0.0)
  if skip and epoch == run.first_step // spe:  # resumed mid-epoch: after SIGTERM, its running sums
    ep.sums, ep.count, ep.carried_seconds = (
        runstate.read_partial_epoch(run.workdir, run.step) or (ep.sums, ep.count, 0.0))
  return ep


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


def _activate_next_component(run: _Run) -> None:
  """Sets the active-component count the schedule wants at run.step (and says so)."""
  cfg, trainer = run.cfg, run.trainer
  want_active = schedule.num_active_at(cfg, run.step, run.steps_per_epoch)
  if want_active != int(trainer.num_active.numpy()):
    trainer.activate(want_active)
    run.log(f'step {run.step}: component {want_active} of {cfg.num_components} activated')


def _chunk_end(run: _Run, ep: _Epoch) -> int:
  """Where the next chunk ends: the epoch's end, the next activation, a multiple of the cap."""
  step = run.step
  boundary = schedule.next_activation_step(run.cfg, step, run.steps_per_epoch)
  chunk_end = min(ep.end_step, boundary if boundary else ep.end_step,
                  (step // MAX_CHUNK_STEPS + 1) * MAX_CHUNK_STEPS)
  if run.stop_after_steps is not None:
    chunk_end = min(chunk_end, max(run.stop_after_steps, step + 1))
  return chunk_end


def _train_chunk(run: _Run, ep: _Epoch) -> None:
  """One call of the compiled steps up to `_chunk_end`; adds its metrics to the epoch's sums."""
  trainer = run.trainer
  chunk_end = _chunk_end(run, ep)
  n = chunk_end - run.step
  metrics = trainer.train_steps(
      ep.iterator, tf.constant(n, tf.int32), trainer.num_active.read_value(),
      tf.constant(trainer.trainable_from(), tf.int32))
  metrics = {k: v.numpy() for k, v in metrics.items()}
  _check_finite(run, metrics, chunk_end)
  for k, v in metrics.items():
    ep.sums[k] = ep.sums.get(k, 0.0) + v * n
  ep.count += n
  run.step = chunk_end


def _check_finite(run: _Run, metrics: Dict, chunk_end: int) -> None:
  """Raises TrainingDiverged (nothing saved) if a chunk's metrics or parameters are not finite."""
  trainer = run.trainer
  bad = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))
  # Parameters too (a non-finite gradient under a finite loss): checked here,
  # once per chunk, rather than by a gradient norm in every compiled step.
  if not bad and not all(np.all(np.isfinite(v.numpy())) for v in trainer.all_vars):
    bad = ['parameters']
  if bad:
    raise errors.TrainingDiverged(
        f'non-finite {", ".join(bad)} between steps {run.step} and {chunk_end}; stopped without '
        f'saving, last good checkpoint {trainer.manager.latest_checkpoint or "(none)"} kept; '
        'try a lower --learning_rate')


def _stop_preempted_mid_epoch(run: _Run, ep: _Epoch) -> None:
  """SIGTERM inside an epoch: saves the epoch's running sums and a checkpoint, raises Preempted.

  The epoch's history entry is written when it ends (after resuming), from the
  sums saved here, as if it had not been interrupted.
  """
  if run.dist.is_chief:
    runstate.write_partial_epoch(run.workdir, run.step, ep.sums, ep.count,
                                 ep.carried_seconds + time.perf_counter() - ep.started)
  path = run.trainer.save('latest', run.step, 'checkpoint')
  run.writer.flush()
  raise errors.Preempted(run.step, path)


# ---------------------------------------------------------- end of an epoch
def _epoch_entry(run: _Run, ep: _Epoch) -> Dict:
  """The epoch's history entry (training metrics averaged over its steps); adds its seconds."""
  epoch_seconds = ep.carried_seconds + time.perf_counter() - ep.started
  run.train_seconds += epoch_seconds
  means = {k: v / max(ep.count, 1) for k, v in ep.sums.items()}
  vector = lambda name: [float(v) for v in np.atleast_1d(means.get(name, []))]
  return {'epoch': (ep.index + 1 if ep.completed(run.step)
                    else ep.index + ep.count / run.steps_per_epoch),
          'step': run.step,
          'num_active': int(run.trainer.num_active.numpy()), 'epoch_seconds': epoch_seconds,
          'train_mixture_elbo': float(means.get('mixture_elbo', np.nan)),
          'component_elbo': vector('component_elbo'),
          'component_objective': vector('component_objective'),
          'mixture_weights': vector('mixture_weights'),
          'weight_entropy': float(means.get('weight_entropy', np.nan))}


def _validate(run: _Run, ep: _Epoch, entry: Dict) -> None:
  """On validation epochs (validation_every, and the last): the validation ELBO into `entry`."""
  cfg, trainer, epoch = run.cfg, run.trainer, ep.index
  if not (ep.completed(run.step) and
          ((epoch + 1) % cfg.validation_every == 0 or epoch + 1 == cfg.epochs)):
    return
  val = likelihood.evaluate_elbo(run.valid_evaluator, run.valid_ds,
                                 trainer.num_active.read_value(), seed=cfg.seed + 2)
  entry['valid_mixture_elbo'] = val['mixture_elbo']
  _check_finite_validation(run, 'validation ELBO', val['mixture_elbo'])


def _check_finite_validation(run: _Run, what: str, value: float) -> None:
  if not math.isfinite(value):
    raise errors.TrainingDiverged(
        f'non-finite {what} at step {run.step}; last good checkpoint '
        f'{run.trainer.manager.latest_checkpoint or "(none)"} kept')


def _measure_valid_log_likelihood(run: _Run, ep: _Epoch, entry: Dict) -> None:
  """Every valid_log_likelihood_every epochs (and the last): validation log p(x) into `entry`.

  Time-to-quality; it also selects under selection = 'log_likelihood'. The same
  images and the same seed every time, so epochs are compared on common draws.
  """
  cfg, epoch = run.cfg, ep.index
  if ep.completed(run.step) and run.valid_ll_ds is not None and (
      (epoch + 1) % cfg.valid_log_likelihood_every == 0 or epoch + 1 == cfg.epochs):
    entry['valid_log_likelihood'] = likelihood.mean_log_likelihood(
        run.valid_evaluator, run.valid_ll_ds, run.trainer.num_active.read_value(),
        num_samples=cfg.valid_log_likelihood_samples, chunk=cfg.eval_chunk,
        seed=cfg.seed + 4).mean
    if cfg.selection == 'log_likelihood':
      _check_finite_validation(run, 'validation log p(x)', entry['valid_log_likelihood'])


# The history entry's key that each cfg.selection selects on.
_SELECTION_KEYS = {'elbo': 'valid_mixture_elbo', 'log_likelihood': 'valid_log_likelihood'}


def _select(run: _Run, entry: Dict) -> bool:
  """Saves best/ if this epoch's value of cfg.selection is the best yet.

  Returns:
    True if this epoch's state was selected (saved to best/).
  """
  trainer = run.trainer
  value = entry.get(_SELECTION_KEYS[run.cfg.selection])
  if value is None or not value > trainer.best_validation.numpy():
    return False
  trainer.best_validation.assign(value)
  trainer.best_step.assign(run.step)
  trainer.best_active.assign(trainer.num_active)
  trainer.save('best', run.step, 'selected (best) checkpoint')
  return True


def _write_summaries(run: _Run, entry: Dict) -> None:
  """The epoch's TensorBoard scalars (a no-op writer on workers other than the chief)."""
  with run.writer.as_default(step=run.step):
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
  run.writer.flush()


def _checkpoint_epoch(run: _Run, entry: Dict) -> None:
  """Appends `entry` to history.json, then saves the latest checkpoint (the chief writes)."""
  run.history.append(entry)
  # History first: a kill between the two leaves an entry past the checkpoint,
  # which read_history drops on resume (the other order would lose the entry).
  if run.dist.is_chief:
    runstate.write_json_or_fail(os.path.join(run.workdir, runstate.HISTORY_FILE), run.history,
                                run.trainer.manager.latest_checkpoint)
  run.trainer.save('latest', run.step, 'checkpoint')
  if run.dist.is_chief:  # the sums of an interrupted epoch are in history now
    runstate.remove_partial_epoch(run.workdir)


def _log_progress(run: _Run, ep: _Epoch, entry: Dict, is_best: bool) -> None:
  """The `epoch ...` line: metrics, seconds and the ETA."""
  cfg, spe = run.cfg, run.steps_per_epoch
  # ETA from wall time per epoch of this call (training, validation and checkpoints).
  wall_per_epoch = ((time.perf_counter() - run.wall_start)
                    / max((run.step - run.first_step) / spe, 1e-9))
  remaining = (run.total_steps - run.step) / spe * wall_per_epoch
  # '*' after the selected quantity: this epoch's state is the best yet (best/).
  star = lambda key: ' *' if is_best and key == _SELECTION_KEYS[cfg.selection] else ''
  val_text = (f' valid ELBO {entry["valid_mixture_elbo"]:.2f}{star("valid_mixture_elbo")}'
              if 'valid_mixture_elbo' in entry else '')
  if 'valid_log_likelihood' in entry:
    val_text += (f' valid log p(x) {entry["valid_log_likelihood"]:.2f}'
                 f'{star("valid_log_likelihood")}')
  run.log(f'epoch {ep.index + 1}/{cfg.epochs} step {run.step} active {entry["num_active"]}/'
          f'{cfg.num_components} train ELBO {entry["train_mixture_elbo"]:.2f}{val_text} '
          f'{entry["epoch_seconds"]:.1f}s ETA {_format_seconds(remaining)}')


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 60}m{seconds % 60:02d}s' if seconds >= 60 else f'{seconds}s'


# ------------------------------------------------------------------- finish
def _finish(run: _Run) -> TrainResult:
  """Restores the selected (best) state if the run is finished; the result of `train`."""
  trainer, dist = run.trainer, run.dist
  finished = run.step >= run.total_steps
  dist.barrier()  # other workers read best/ once the chief has written it
  best = (trainer.best_manager.latest_checkpoint if dist.is_chief else
          tf.train.latest_checkpoint(trainer.best_manager.directory))
  if finished and best:
    runstate.restore_or_fail(trainer.best_checkpoint, best,
                             config_file=config_lib.config_path(run.workdir))
    trainer.num_active.assign(trainer.best_active)
  return TrainResult(trainer=trainer, history=run.history, train_seconds=run.train_seconds,
                     steps=run.step, splits=run.splits, ran_steps=run.step - run.first_step)
