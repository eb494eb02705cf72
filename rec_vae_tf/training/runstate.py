"""What a run leaves in its workdir, and how it survives faults (README, "Faults and preemption").

The training loop (rec_vae_tf/training/loop.py) and the trainer
(rec_vae_tf/training/trainer.py) keep a run's state here:

  * the workdir layout: config.json (rec_vae_tf/config.py), CHECKPOINT_DIR,
    BEST_DIR, HISTORY_FILE, SUMMARY_DIR, and PARTIAL_EPOCH_FILE (the running
    sums of an epoch interrupted by SIGTERM);
  * checkpoints: `checkpoint_problem` reads one whole to tell whether it is
    readable, `checkpoint_mismatch` whether its variables fit the run's config
    (not another run's checkpoint), `checkpoint_candidates` lists them newest
    first (a lost state file included), `save_checkpoint` and `restore_or_fail`
    turn a failed write or read into one line naming what was kept;
  * history.json and the partial epoch: written atomically (`write_json_or_fail`),
    read back up to the restored step (`read_history`, which refuses a file
    edited into another shape, and `read_partial_epoch`);
  * the workdir's room: `check_workdir` (writable) and `check_free_space` (room
    for the checkpoints kept), before any step is taken;
  * the process: `PreemptionGuard` turns SIGTERM into a request the loop answers
    between chunks, `op_determinism` scopes TensorFlow's op determinism to a
    run, and `LOST_PEER_ERRORS` are what a collective raises when another
    worker is gone.

Errors are one line (`one_line_error`), never a traceback.
"""

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import threading
import time
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from tensorflow.core.protobuf import trackable_object_graph_pb2
from rec_vae_tf import config as config_lib
from rec_vae_tf import errors

CHECKPOINT_DIR = 'checkpoints'
BEST_DIR = 'best'
HISTORY_FILE = 'history.json'
SUMMARY_DIR = 'summaries'
# The running sums of an epoch interrupted by SIGTERM, for its history entry.
PARTIAL_EPOCH_FILE = 'partial_epoch.json'
# Free space wanted beyond the checkpoints (history, summaries, evaluations).
_FREE_SPACE_MARGIN_BYTES = 16 << 20

# What a collective op of MultiWorkerMirroredStrategy raises when a peer is gone.
LOST_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.CancelledError,
                    tf.errors.AbortedError, tf.errors.DeadlineExceededError)


def check_workdir(workdir: str) -> None:
  """Fails fast with a one-line error if workdir cannot be created or written.

  (config.check_workdir; launchers call it before TensorFlow loads, `train`
  again before any work, and `train` checks the free space once the size of a
  checkpoint is known.)
  """
  config_lib.check_workdir(workdir)


# ------------------------------------------------------------------ errors
def one_line_error(e: BaseException) -> str:
  """An exception as one short line, without TF's `{{function_node ...}}` and `[Op:...]` noise."""
  text = e.message if isinstance(e, tf.errors.OpError) else (
      getattr(e, 'strerror', None) or str(e) or type(e).__name__)
  text = re.sub(r'\{\{[^}]*\}\}|\[Op:[^\]]*\]', '', str(text))
  return ' '.join(text.split())[:300]


# ------------------------------------------------------------- checkpoints
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
    return one_line_error(e)
  return None


def checkpoint_candidates(manager: tf.train.CheckpointManager) -> List[str]:
  """Checkpoint prefixes to try, newest step first: the manager's list and any others on disk."""
  paths = {os.path.basename(p): p for p in manager.checkpoints}
  for index in glob.glob(os.path.join(glob.escape(manager.directory), 'ckpt-*.index')):
    prefix = index[:-len('.index')]
    paths.setdefault(os.path.basename(prefix), prefix)

  def number(name):
    tail = name.rsplit('-', 1)[-1]
    return int(tail) if tail.isdigit() else -1

  return [paths[name] for name in sorted(paths, key=number, reverse=True)]


def save_checkpoint(manager: tf.train.CheckpointManager, step: int, what: str) -> str:
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
        f'cannot write the {what} at step {step} ({one_line_error(e)}); '
        f'{manager.latest_checkpoint or "no earlier checkpoint"} is kept; free space (or fix '
        'permissions) and rerun the same command to resume') from None


# Where TensorFlow stores a checkpoint's object graph (a TrackableObjectGraph proto).
_OBJECT_GRAPH_KEY = '_CHECKPOINTABLE_OBJECT_GRAPH'


def checkpoint_mismatch(root, path: str, *, complete: bool) -> Optional[str]:
  """Why the readable checkpoint at `path` does not fit `root`'s variables, or None.

  Walks root's objects (tf.train.TrackableView) and the checkpoint's object
  graph together and compares the shape of every variable both hold. A
  checkpoint of a run with another method, number of components, latent_dim,
  network or dataset differs there. Checking first matters: restoring such a
  checkpoint fails halfway, and TensorFlow then prints warnings about the
  unrestored values when the process ends, after the one-line error.

  Args:
    root: the tf.train.Checkpoint to restore into.
    path: a checkpoint prefix that `checkpoint_problem` found readable.
    complete: every variable of root must be in the checkpoint too (a run's own
      checkpoints hold all of them; a --checkpoint path of best/ has no optimizer).
  Returns:
    None, or one line such as `encoder/eps_head/bias has shape [1, 1] there,
    [2, 1] for this config`.
  """
  reader = tf.train.load_checkpoint(path)
  shapes = reader.get_variable_to_shape_map()
  graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
      reader.get_tensor(_OBJECT_GRAPH_KEY))
  view = tf.train.TrackableView(root)
  pending, seen = [(root, 0, '')], set()
  while pending:
    obj, node_id, name = pending.pop(0)
    if id(obj) in seen:  # the optimizer lists the networks' variables again
      continue
    seen.add(id(obj))
    node = graph.nodes[node_id]
    live = getattr(obj, 'shape', None)
    for attribute in node.attributes:
      saved = shapes.get(attribute.checkpoint_key)
      if attribute.name == 'VARIABLE_VALUE' and live is not None and saved is not None:
        if list(saved) != list(live):
          return f'{name} has shape {list(saved)} there, {list(live)} for this config'
    saved_children = {child.local_name: child.node_id for child in node.children}
    for child_name, child in view.children(obj).items():
      child_path = f'{name}/{child_name}' if name else child_name
      if child_name in saved_children:
        pending.append((child, saved_children[child_name], child_path))
      elif complete and child_name != 'save_counter' and _holds_variables(child):
        return f'it has no {child_path}'
  return None


def _holds_variables(obj) -> bool:
  """Whether obj or anything it tracks is a variable (has a shape)."""
  return any(getattr(o, 'shape', None) is not None
             for o in tf.train.TrackableView(obj).descendants())


def mismatch_error(path: str, problem: str, config_file: Optional[str] = None) -> errors.UserError:
  """The one-line error for a checkpoint of another run (`checkpoint_mismatch`)."""
  config = f'the config in {config_file}' if config_file else "the run's config"
  return errors.UserError(
      f'checkpoint {path} does not match {config} ({problem}): it was written by a run with '
      'another method, number of components, latent_dim, network or dataset; put back the '
      "run's own checkpoints, or train into a new --workdir")


def restore_or_fail(checkpoint: tf.train.Checkpoint, path: str, *, complete: bool = True,
                    config_file: Optional[str] = None) -> None:
  """checkpoint.restore(path) of a checkpoint read whole and matched first; else one line.

  Args:
    checkpoint: what to restore into.
    path: the checkpoint prefix.
    complete: as `checkpoint_mismatch` (False: a checkpoint may lack some of
      checkpoint's variables, e.g. a best/ checkpoint has no optimizer).
    config_file: the run's config.json, named by the error for another run's
      checkpoint.
  Raises:
    UserError: the checkpoint is unreadable, or it is another run's (its
      variables do not fit).
  """
  problem = checkpoint_problem(path)
  if problem is None:
    mismatch = checkpoint_mismatch(checkpoint, path, complete=complete)
    if mismatch is not None:
      raise mismatch_error(path, mismatch, config_file)
    try:
      checkpoint.restore(path).expect_partial()
    except Exception as e:  # pylint: disable=broad-except  (see checkpoint_problem)
      problem = one_line_error(e)
  if problem is not None:
    raise errors.UserError(f'checkpoint {path} is unreadable ({problem})')


# --------------------------------------------------- history, partial epoch
def write_json_or_fail(path: str, value, keeps: Optional[str]) -> None:
  """config.write_json_atomic with a one-line error naming the checkpoint that is kept."""
  try:
    config_lib.write_json_atomic(path, value)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(path + '.tmp')
    raise errors.UserError(
        f'cannot write {path} ({one_line_error(e)}); {keeps or "no checkpoint"} is kept; free '
        'space (or fix permissions) and rerun the same command to resume') from None


def read_history(path: str, up_to_step: Optional[int] = None) -> List[Dict]:
  """The history entries up to `up_to_step` (None: all); one line if the file is damaged.

  A missing file is an empty history. The file must be what `loop.train`
  writes: a JSON list of objects, each with an integer "step" and, if present,
  a numeric "epoch_seconds" (the training time that resuming and evaluation
  add up).

  Raises:
    UserError: the file cannot be read, is not JSON, or has another shape.
  """
  if not os.path.exists(path):
    return []
  fix = ('restore it or move it away (the run then resumes with the history of later epochs '
         'only)')
  try:
    with open(path) as f:
      history = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.UserError(f'unreadable {path} ({one_line_error(e)}); {fix}') from None
  problem = _history_problem(history)
  if problem:
    raise errors.UserError(f'unreadable {path} ({problem}); {fix}')
  return [h for h in history if up_to_step is None or h['step'] <= up_to_step]


def _history_problem(history) -> Optional[str]:
  """What is wrong with the shape of history.json's content, or None."""
  def number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)

  if not isinstance(history, list):
    return f'a JSON {_json_type(history)}, expected a list of epoch entries'
  for i, entry in enumerate(history):
    if not isinstance(entry, dict):
      return f'entry {i} is a JSON {_json_type(entry)}, expected an object'
    step = entry.get('step')
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
      return f'entry {i} has "step": {json.dumps(step)[:40]}, expected an integer >= 0'
    if 'epoch_seconds' in entry and not number(entry['epoch_seconds']):
      return (f'entry {i} has "epoch_seconds": {json.dumps(entry["epoch_seconds"])[:40]}, '
              'expected a number')
  return None


def _json_type(value) -> str:
  """The JSON name of a parsed JSON value's type."""
  names = {dict: 'object', list: 'list', str: 'string', bool: 'boolean', type(None): 'null'}
  return names.get(type(value), 'number')


def write_partial_epoch(workdir: str, step: int, sums: Dict, count: int, seconds: float) -> None:
  """Saves the running metric sums of an epoch interrupted at `step` (exact float values)."""
  sums = {k: {'dtype': np.asarray(v).dtype.name, 'value': np.asarray(v).tolist()}
          for k, v in sums.items()}
  write_json_or_fail(os.path.join(workdir, PARTIAL_EPOCH_FILE),
                     {'step': step, 'count': count, 'epoch_seconds': seconds, 'sums': sums}, None)


def read_partial_epoch(workdir: str, step: int):
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


def remove_partial_epoch(workdir: str) -> None:
  """Deletes the partial-epoch file, if any (its sums are in the history now)."""
  with contextlib.suppress(OSError):
    os.remove(os.path.join(workdir, PARTIAL_EPOCH_FILE))


# -------------------------------------------------------------- free space
def _checkpoint_bytes(trainer) -> int:
  """Bytes of the variables in one training checkpoint (networks and optimizer)."""
  variables = {id(v): v for v in list(trainer.all_vars) + list(trainer.optimizer.variables)}
  return sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in variables.values())


def check_free_space(trainer, workdir: str) -> None:
  """Fails with one line, before training, if workdir's disk cannot hold the checkpoints.

  Needs room for the checkpoints kept (plus one being written) and best/, less
  what those directories already hold, plus a margin; at least one checkpoint.

  Args:
    trainer: a `trainer.Trainer` (its variables, optimizer and checkpoint manager).
    workdir: the run directory.
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


# ----------------------------------------------------------------- process
class PreemptionGuard:
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

  def __enter__(self) -> 'PreemptionGuard':
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
def op_determinism(enabled: bool):
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
