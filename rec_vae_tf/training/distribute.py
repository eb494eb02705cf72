"""tf.distribute for training and evaluation: which strategy, which replica, who writes.

`Config.strategy` picks one of:

  default       `tf.distribute.get_strategy()`, TensorFlow's no-op default
                strategy: the trainer's original single-device code path.
  mirrored      `tf.distribute.MirroredStrategy`, synchronous data parallelism
                over all local GPUs; on a machine without GPUs over all
                logical CPU devices (one replica unless the CPU was split with
                `split_cpu` before TensorFlow initialised, as the tests do).
  multi_worker  `tf.distribute.MultiWorkerMirroredStrategy` over the cluster
                in TF_CONFIG (`rec_vae_tf.training.cluster`): every worker runs the
                same command; collectives over gRPC (ring all-reduce on CPUs,
                NCCL on GPUs, chosen by TensorFlow).
  tpu           `tf.distribute.TPUStrategy` on the TPU `TPUClusterResolver`
                finds (TPU_NAME, or a Cloud TPU VM's local TPU). Written to
                the API but never run: no TPU was available to this project.

What stays the same under every strategy (so that a run gives the same
numbers, up to float rounding, on any number of replicas): the global batch B
(each of R replicas gets B / R rows), the data order and binarization noise,
and the per-step Gaussian noise. Replica r of R takes rows [r B/R, (r+1) B/R)
of global batch i and the same rows of the step's [S, B, M, D] noise, which
is drawn for the whole global batch from (seed, step) as without a strategy:
every replica's noise is distinct (different rows of one draw) and equals
what the default strategy draws for those examples. Losses are sums over a
replica's examples divided by B, so the all-reduced (summed) gradient is the
gradient of the global batch mean.

Who writes: the chief (worker 0, or the "chief" task) writes checkpoints,
`best/`, history and summaries into the workdir. Other workers take part in
every save (MultiWorkerMirroredStrategy's pattern: saving may run collective
ops) but write into a private temporary directory that is deleted after each
save, and a no-op summary writer.
"""

import contextlib
import os
import shutil
import tempfile
from typing import Optional

import tensorflow as tf

from rec_vae_tf.training import cluster
from rec_vae_tf import errors

_STRATEGIES = {}  # name -> strategy: MultiWorkerMirroredStrategy may be created once per process


class Distribution:
  """A strategy and this process's role in it.

  Attributes:
    name: the Config.strategy value.
    strategy: the tf.distribute.Strategy.
    distributed: False only for `default` (the trainer then runs its original
      code path).
    num_replicas: replicas in sync, over all workers.
    is_chief: this process writes checkpoints, summaries and history.
    task_id: this worker's index (0 without a cluster).
  """

  def __init__(self, name: str, strategy, *, is_chief: bool = True, task_id: int = 0):
    self.name = name
    self.strategy = strategy
    self.distributed = name != 'default'
    self.num_replicas = int(strategy.num_replicas_in_sync)
    self.is_chief = is_chief
    self.task_id = task_id
    self.multi_worker = name == 'multi_worker'
    self._any = None

  def scope(self):
    """The strategy's scope for creating variables; nothing for `default`."""
    return self.strategy.scope() if self.distributed else contextlib.nullcontext()

  def any_worker(self, flag: bool) -> bool:
    """True if `flag` is true on any worker; an all-reduce across workers under multi_worker.

    Every worker must call it at the same points (it is a collective op): the
    trainer calls it where it checks for SIGTERM, so a preemption notice sent
    to one worker stops all of them at the same step.
    """
    if not self.multi_worker:
      return bool(flag)
    if self._any is None:
      strategy = self.strategy

      @tf.function
      def any_fn(value):
        per_replica = strategy.run(tf.identity, args=(value,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

      self._any = any_fn
    return bool(self._any(tf.constant(1.0 if flag else 0.0)).numpy() > 0)

  def barrier(self) -> None:
    """Waits until every worker gets here (multi_worker; a no-op otherwise)."""
    self.any_worker(False)

  @contextlib.contextmanager
  def write_dir(self, path: str):
    """Where this process writes a checkpoint meant for `path`.

    The chief writes to `path` itself. Another worker writes into a new
    temporary directory, deleted when the block ends.
    """
    if self.is_chief:
      yield path
      return
    tmp = tempfile.mkdtemp(prefix=f'rec_vae_worker{self.task_id}_')
    try:
      yield os.path.join(tmp, os.path.basename(path.rstrip('/')) or 'ckpt')
    finally:
      shutil.rmtree(tmp, ignore_errors=True)


def split_cpu(num_devices: int) -> None:
  """Splits the first physical CPU into `num_devices` logical devices.

  Must run before TensorFlow initialises its devices (before the first op);
  `mirrored` then has `num_devices` replicas on a CPU-only machine. For tests
  and for trying a strategy on a laptop: the replicas share the same cores.

  Raises:
    RuntimeError: TensorFlow has already initialised its devices.
  """
  cpu = tf.config.list_physical_devices('CPU')[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)])


def get(name: str) -> Distribution:
  """The Distribution for Config.strategy `name` (created once per process).

  Raises:
    ConfigError: unknown name, or a malformed TF_CONFIG for multi_worker.
    UserError: the strategy cannot start here (no TPU; multi_worker asked for
      after TensorFlow had initialised its runtime).
  """
  if name == 'default':
    return Distribution(name, tf.distribute.get_strategy())
  task = cluster.from_environment() if name == 'multi_worker' else None
  if name not in _STRATEGIES:
    _STRATEGIES[name] = _create(name)
  strategy = _STRATEGIES[name]
  if task is None:
    return Distribution(name, strategy)
  return Distribution(name, strategy, is_chief=task.is_chief, task_id=task.task_id)


def _create(name: str):
  if name == 'mirrored':
    devices = tf.config.list_logical_devices('GPU') or tf.config.list_logical_devices('CPU')
    return tf.distribute.MirroredStrategy(devices=[d.name for d in devices])
  if name == 'multi_worker':
    try:
      return tf.distribute.MultiWorkerMirroredStrategy()
    except (RuntimeError, ValueError) as e:
      raise errors.UserError(
          f'cannot start MultiWorkerMirroredStrategy ({_one_line(e)}); it must be created before '
          'TensorFlow runs anything else in the process (launch/train.py does this)') from None
  if name == 'tpu':
    return _tpu_strategy()
  raise errors.ConfigError(f'invalid config: strategy={name!r}; allowed: one of default, '
                           'mirrored, multi_worker, tpu')


def _tpu_strategy(tpu: Optional[str] = None):
  """TPUStrategy on the TPU TPUClusterResolver finds. Untested: no TPU was available."""
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  except (ValueError, RuntimeError, tf.errors.OpError) as e:
    raise errors.UserError(
        f'--strategy=tpu: no TPU found ({_one_line(e)}); run on a Cloud TPU VM or set TPU_NAME '
        'to the TPU\'s name or grpc:// address') from None


def _one_line(e: BaseException) -> str:
  text = e.message if isinstance(e, tf.errors.OpError) else str(e)
  return ' '.join(str(text).split())[:300] or type(e).__name__


def replica_rows(tensor, batch_size: int, axis: int = 0):
  """This replica's equal block of `tensor`'s global-batch axis (in a replica context).

  Args:
    tensor: a value for the whole global batch, e.g. noise [S, B, M, D] (axis 1).
    batch_size: B, divisible by the number of replicas.
    axis: the batch axis.
  Returns:
    Rows [r B/R, (r+1) B/R) of that axis for replica r of R (a static size,
    so XLA and TPUs see fixed shapes).
  """
  ctx = tf.distribute.get_replica_context()
  per_replica = batch_size // ctx.num_replicas_in_sync
  begin = [0] * len(tensor.shape)
  begin[axis] = ctx.replica_id_in_sync_group * per_replica
  size = [-1] * len(tensor.shape)
  size[axis] = per_replica
  return tf.slice(tensor, tf.stack(begin), size)


def padded_rows(tensor, num_rows: int, axis: int = 0, pad_value: float = 0.0):
  """This replica's block of rows of an evaluation batch that R may not divide.

  The batch axis (`num_rows` long) is padded to R * ceil(num_rows / R) with
  `pad_value`, and replica r takes block r of that; `row_mask` says which
  rows are real. Static shapes, so XLA and TPUs see one shape per batch size.
  """
  ctx = tf.distribute.get_replica_context()
  per_replica = -(-num_rows // ctx.num_replicas_in_sync)
  pad = [[0, 0]] * len(tensor.shape)
  pad[axis] = [0, per_replica * ctx.num_replicas_in_sync - num_rows]
  padded = tf.pad(tensor, pad, constant_values=tf.cast(pad_value, tensor.dtype))
  begin = [0] * len(tensor.shape)
  begin[axis] = ctx.replica_id_in_sync_group * per_replica
  size = [-1] * len(tensor.shape)
  size[axis] = per_replica
  return tf.slice(padded, tf.stack(begin), size)


def row_mask(num_rows: int):
  """[ceil(num_rows / R)] bool: which of this replica's `padded_rows` are real rows."""
  ctx = tf.distribute.get_replica_context()
  per_replica = -(-num_rows // ctx.num_replicas_in_sync)
  first = ctx.replica_id_in_sync_group * per_replica
  return first + tf.range(per_replica) < num_rows
