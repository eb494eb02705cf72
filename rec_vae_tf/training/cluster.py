"""The task a multi-worker run is, read from TF_CONFIG, without TensorFlow.

`--strategy=multi_worker` trains with `tf.distribute.MultiWorkerMirroredStrategy`,
which learns the cluster from the TF_CONFIG environment variable, one per
process:

  TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
              "task": {"type": "worker", "index": 0}}'

Every worker gets the same "cluster" and its own "task". The chief (the one
that writes checkpoints, summaries and history) is the "chief" task if the
cluster has one, else worker 0. TensorFlow reads a malformed TF_CONFIG with
a KeyError or a hang while it waits for a peer that cannot exist; this module
checks it first, so launchers can refuse it in one line before TensorFlow
loads (README, "Distributed training").
"""

import dataclasses
import json
import os
import re
from typing import Mapping, Optional

from rec_vae_tf import errors

# Jobs MultiWorkerMirroredStrategy trains with; it has no parameter servers
# ("ps"), and this project runs no side-car "evaluator".
SUPPORTED_JOBS = ('chief', 'worker')
EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host1:port", "host2:port"]}, '
           '"task": {"type": "worker", "index": 0}}\'')
_ADDRESS = re.compile(r'^(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:\[\]/]+):(?P<port>[0-9]{1,5})$')


@dataclasses.dataclass(frozen=True)
class Task:
  """This process's place in the cluster."""
  task_type: str     # 'chief' or 'worker'
  task_id: int       # index within its job
  num_workers: int   # tasks that train: the chief (if any) and every worker
  is_chief: bool     # writes checkpoints, summaries and history


def _fail(problem: str) -> None:
  raise errors.ConfigError(f'invalid TF_CONFIG for --strategy=multi_worker: {problem}')


def parse_tf_config(text: Optional[str]) -> Task:
  """Checks a TF_CONFIG value and returns this process's task.

  Args:
    text: the value of TF_CONFIG (None: unset).
  Returns:
    Task.
  Raises:
    ConfigError: one line naming what is wrong (unset or blank, not JSON, not
      an object, no or malformed "cluster", an unsupported job, a bad
      "host:port" address, a repeated address, no or malformed "task", a task
      type not in the cluster, an index out of range).
  """
  if text is None or not text.strip():
    raise errors.ConfigError(
        'strategy=multi_worker needs the TF_CONFIG environment variable on every worker, e.g. '
        f'{EXAMPLE} (README, "Distributed training")')
  try:
    value = json.loads(text)
  except ValueError as e:
    _fail(f'not valid JSON ({getattr(e, "msg", e)} at line {getattr(e, "lineno", "?")} column '
          f'{getattr(e, "colno", "?")}); expected e.g. {EXAMPLE}')
  if not isinstance(value, dict):
    _fail(f'expected a JSON object with "cluster" and "task", got {type(value).__name__}')
  if 'cluster' not in value:
    _fail('no "cluster" (a map from job name to a list of "host:port" addresses)')
  cluster = value['cluster']
  if not isinstance(cluster, dict) or not cluster:
    _fail('"cluster" must be a non-empty object mapping "worker" (and optionally "chief") to '
          'lists of "host:port" addresses')
  seen = {}
  for job, addresses in cluster.items():
    if job not in SUPPORTED_JOBS:
      _fail(f'cluster job {job!r} is not supported; MultiWorkerMirroredStrategy trains with '
            f'{" and ".join(repr(j) for j in SUPPORTED_JOBS)} jobs only')
    if not isinstance(addresses, list) or not addresses:
      _fail(f'cluster job {job!r} must be a non-empty list of "host:port" addresses')
    if job == 'chief' and len(addresses) != 1:
      _fail(f'cluster job \'chief\' must have exactly one address, got {len(addresses)}')
    for i, address in enumerate(addresses):
      match = _ADDRESS.match(address) if isinstance(address, str) else None
      if not match or not 1 <= int(match.group('port')) <= 65535:
        _fail(f'cluster {job}[{i}] = {address!r} is not a "host:port" address with a port in '
              '1..65535')
      if address in seen:
        _fail(f'address {address!r} is listed twice ({seen[address]} and {job}[{i}])')
      seen[address] = f'{job}[{i}]'
  if 'task' not in value:
    _fail('no "task" (this process\'s {"type": ..., "index": ...})')
  task = value['task']
  if not isinstance(task, dict):
    _fail('"task" must be an object {"type": ..., "index": ...}')
  task_type = task.get('type')
  if task_type not in cluster:
    _fail(f'task type {task_type!r} is not a job of the cluster '
          f'({", ".join(repr(j) for j in cluster)})')
  index = task.get('index', 0 if task_type == 'chief' else None)
  if isinstance(index, bool) or not isinstance(index, int):
    _fail(f'task index {index!r} must be an integer')
  size = len(cluster[task_type])
  if not 0 <= index < size:
    _fail(f'task index {index} is out of range; job {task_type!r} has {size} address'
          f'{"es" if size != 1 else ""} (indices 0..{size - 1})')
  is_chief = task_type == 'chief' if 'chief' in cluster else index == 0
  return Task(task_type=task_type, task_id=index,
              num_workers=sum(len(a) for a in cluster.values()), is_chief=is_chief)


def from_environment(environ: Optional[Mapping[str, str]] = None) -> Task:
  """`parse_tf_config` of TF_CONFIG in `environ` (default: os.environ)."""
  environ = os.environ if environ is None else environ
  return parse_tf_config(environ.get('TF_CONFIG'))


def check_strategy_environment(strategy: str,
                               environ: Optional[Mapping[str, str]] = None) -> None:
  """Refuses, in one line, what `strategy` cannot start with (TF_CONFIG for multi_worker).

  Needs no TensorFlow: launchers call it before TensorFlow loads.
  """
  if strategy == 'multi_worker':
    from_environment(environ)
