"""tf.distribute: strategies, TF_CONFIG, sharded input, mirrored == default, multi-worker faults.

In this process: TF_CONFIG checking (rec_vae_tf.training.cluster), the Config field,
and `pipeline.make_train_dataset(slices=...)`. TensorFlow fixes its devices and
MultiWorkerMirroredStrategy once per process, so the rest runs in
subprocesses, bounded in time and bound to 127.0.0.1 only:

  * this file run as a script (`_mirrored_vs_default`) splits the CPU into two
    logical devices and trains the same tiny runs under `default` and under
    `mirrored` (2 replicas), then evaluates both: same parameters, history,
    validation ELBO and importance-sampled log p(x) (tolerances below);
  * launch/train.py as two `multi_worker` processes (TF_CONFIG with two
    loopback workers): killed with SIGKILL and restarted, or stopped with
    SIGTERM on one worker and restarted, each ends at the same step as an
    uninterrupted run with the parameters of a `default` run of the same
    config.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from rec_vae_tf.training import cluster
from rec_vae_tf import config as config_lib
from rec_vae_tf import errors

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CWD = os.getcwd() if os.path.isfile(os.path.join('launch', 'train.py')) else _ROOT

# Tolerances of "the same" across strategies. Sums over a replica's rows and
# the all-reduce add in another order than one device's mean, so values agree
# to float32 rounding, not bit for bit, and Adam (which divides by the root of
# the squared gradients) lets those differences grow in weights whose
# gradients are nearly zero. Measured here: after the 12 steps of the tiny
# mirrored runs every parameter is within 6e-8 of the default run's; after the
# 48 steps of the 784-pixel multi-worker runs within 6e-6 (parameters are
# of order 0.1; all but a few within 1e-6).
PARAM_RTOL, PARAM_ATOL = 1e-5, 1e-6
WORKER_PARAM_RTOL, WORKER_PARAM_ATOL = 1e-5, 2e-5
METRIC_RTOL = 1e-6


# ------------------------------------------------------------- TF_CONFIG


def _tf_config(cluster_spec, task):
  return json.dumps({'cluster': cluster_spec, 'task': task})


TWO = {'worker': ['127.0.0.1:2222', '127.0.0.1:2223']}


def test_tf_config_tasks_and_chief():
  task = cluster.parse_tf_config(_tf_config(TWO, {'type': 'worker', 'index': 1}))
  assert task == cluster.Task(task_type='worker', task_id=1, num_workers=2, is_chief=False)
  assert cluster.parse_tf_config(_tf_config(TWO, {'type': 'worker', 'index': 0})).is_chief
  with_chief = dict(TWO, chief=['10.0.0.5:2000'])  # other hosts are fine outside the tests
  assert cluster.parse_tf_config(_tf_config(with_chief, {'type': 'chief', 'index': 0})).is_chief
  worker0 = cluster.parse_tf_config(_tf_config(with_chief, {'type': 'worker', 'index': 0}))
  assert not worker0.is_chief and worker0.num_workers == 3
  cluster.check_strategy_environment('mirrored', {})  # only multi_worker needs TF_CONFIG


# (TF_CONFIG value, fragment of the one-line message). The launcher battery in
# tests/test_hostile_inputs.py runs these through launch/train.py.
BAD_TF_CONFIGS = {
    'unset': (None, 'needs the TF_CONFIG environment variable'),
    'blank': ('  ', 'needs the TF_CONFIG environment variable'),
    'not JSON': ('{"cluster": {"worker": ["127.0.0.1:2222"]', 'not valid JSON'),
    'a list': ('[1, 2]', 'expected a JSON object'),
    'no cluster': (json.dumps({'task': {'type': 'worker', 'index': 0}}), 'no "cluster"'),
    'empty cluster': (_tf_config({}, {'type': 'worker', 'index': 0}), '"cluster" must be'),
    'parameter servers': (_tf_config(dict(TWO, ps=['127.0.0.1:2224']),
                                     {'type': 'worker', 'index': 0}), "job 'ps' is not supported"),
    'addresses not a list': (_tf_config({'worker': '127.0.0.1:2222'},
                                        {'type': 'worker', 'index': 0}), 'non-empty list'),
    'address without a port': (_tf_config({'worker': ['127.0.0.1']},
                                           {'type': 'worker', 'index': 0}), 'not a "host:port"'),
    'port out of range': (_tf_config({'worker': ['127.0.0.1:70000']},
                                     {'type': 'worker', 'index': 0}), 'not a "host:port"'),
    'address twice': (_tf_config({'worker': ['127.0.0.1:2222', '127.0.0.1:2222']},
                                 {'type': 'worker', 'index': 0}), 'listed twice'),
    'two chiefs': (_tf_config(dict(TWO, chief=['127.0.0.1:3000', '127.0.0.1:3001']),
                              {'type': 'chief', 'index': 0}), 'exactly one address'),
    'no task': (json.dumps({'cluster': TWO}), 'no "task"'),
    'task not an object': (json.dumps({'cluster': TWO, 'task': 'worker'}), '"task" must be'),
    'task type not in the cluster': (_tf_config(TWO, {'type': 'chief', 'index': 0}),
                                     "task type 'chief' is not a job"),
    'index out of range': (_tf_config(TWO, {'type': 'worker', 'index': 2}), 'out of range'),
    'negative index': (_tf_config(TWO, {'type': 'worker', 'index': -1}), 'out of range'),
    'index a string': (_tf_config(TWO, {'type': 'worker', 'index': '1'}), 'must be an integer'),
}


@pytest.mark.parametrize('name', list(BAD_TF_CONFIGS))
def test_malformed_tf_config_is_one_line(name):
  text, fragment = BAD_TF_CONFIGS[name]
  with pytest.raises(errors.ConfigError) as e:
    cluster.check_strategy_environment('multi_worker', {} if text is None else {'TF_CONFIG': text})
  assert fragment in str(e.value) and '\n' not in str(e.value), str(e.value)


def test_strategy_is_a_validated_config_field():
  assert config_lib.Config().strategy == 'default'
  with pytest.raises(errors.ConfigError, match=r"strategy='gpus'; allowed: one of default, "
                                               r'mirrored, multi_worker, tpu'):
    config_lib.Config(strategy='gpus').validate()
  # config.json of a run without a strategy is unchanged (and the grid's keys with it).
  assert 'strategy' not in config_lib.Config().to_dict()
  mirrored = config_lib.Config(strategy='mirrored')
  assert config_lib.Config.from_dict(mirrored.to_dict()) == mirrored


# ------------------------------------------------------------ sharded input


@pytest.mark.parametrize('binarization', ['dynamic', 'static'])
def test_replica_slices_cut_the_same_batches(binarization):
  """Blocks of all pipelines, in order, are the unsliced batches: same rows, same noise."""
  from rec_vae_tf.data import pipeline as data_lib  # pylint: disable=g-import-not-at-top
  images = (np.random.default_rng(0).random([30, 7]) * 255).astype(np.uint8)
  kwargs = dict(batch_size=6, seed=3, epoch=2, binarization=binarization, skip_batches=1)
  whole = [b.numpy() for b in data_lib.make_train_dataset(images, **kwargs)]  # 4 batches
  # Two workers (input pipelines) with 3 local replicas each: 6 replicas of 1 row.
  blocks = [[b.numpy() for b in data_lib.make_train_dataset(images, slices=(3 * p, 3, 6),
                                                            **kwargs)] for p in range(2)]
  assert all(len(b) == 3 * len(whole) and b[0].shape == (1, 7) for b in blocks)
  for i, batch in enumerate(whole):
    rebuilt = np.concatenate(blocks[0][3 * i:3 * i + 3] + blocks[1][3 * i:3 * i + 3])
    np.testing.assert_array_equal(rebuilt, batch)
  with pytest.raises(errors.ConfigError, match=r'slices=\(0, 1, 4\) is invalid'):
    data_lib.make_train_dataset(images, slices=(0, 1, 4), **kwargs)  # 4 does not divide 6


# ------------------------------------------------------ mirrored == default

MIRRORED_TIMEOUT = 240


def _mirrored_vs_default(out_path):
  """Subprocess body: default and mirrored (2 logical CPUs) runs of tiny configs, compared."""
  from rec_vae_tf.training import distribute  # pylint: disable=g-import-not-at-top
  distribute.split_cpu(2)  # before TensorFlow initialises its devices
  from rec_vae_tf.data import pipeline as data_lib  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.data import sources as data_sources  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.evaluation import likelihood  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.models import networks  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.training import loop as loop_lib  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top

  pixels = 12

  def load_data(data_dir, train_examples=None):  # 6 steps of 4; 6 and 6 held out
    del data_dir, train_examples
    images = (np.random.default_rng(0).random([36, pixels]) * 255).astype(np.uint8)
    return data_sources.Splits(train=images[:24], valid=images[24:30], test=images[30:])

  def tiny_networks(num_components, hidden_units, latent_dim, eps_mode, seed, num_pixels):
    del hidden_units
    return networks.build_networks(num_components, (8,), latent_dim, eps_mode, seed, num_pixels)

  configs = {
      # Recursion with an activation mid-run, earlier components frozen, XLA on.
      'rme_freeze_earlier': dict(method='rme', num_components=2, schedule='freeze_earlier',
                                 xla=True),
      # Per-example refinement (its own noise), no XLA.
      'savae': dict(method='savae', num_components=1, refine_steps=2, xla=False),
  }
  report = {}
  workdirs = {}
  for name, changes in configs.items():
    runs = {}
    for strategy in ('default', 'mirrored'):
      cfg = config_lib.Config(
          latent_dim=2, epochs=2, epochs_per_component=1.0, batch_size=4, eval_batch_size=5,
          learning_rate=1e-2, seed=1, strategy=strategy, **changes).validate()
      workdir = workdirs[name, strategy] = tempfile.mkdtemp()
      result = loop_lib.train(cfg, workdir, load_data=load_data, make_networks=tiny_networks,
                              log=lambda line: None)
      tr = result.trainer
      test = data_lib.make_eval_dataset(load_data(None).test, batch_size=5, seed=0)
      evaluation = likelihood.evaluate(
          tr.method, test, tr.num_active.numpy(), num_samples=7, chunk=3, seed=0, xla=cfg.xla,
          strategy=tr.dist.strategy if tr.dist.distributed else None)
      runs[strategy] = {
          'replicas': tr.dist.num_replicas,
          'steps': result.steps,
          'params': [v.numpy().tolist() for v in tr.all_vars],
          'history': [{k: v for k, v in h.items() if k != 'epoch_seconds'}
                      for h in result.history],
          'test_log_likelihood': evaluation['test_log_likelihood'],
          'test_elbo': evaluation['test_elbo'],
      }
    report[name] = runs
  # A finished default run reopened under mirrored: the strategy may change between runs.
  cfg = config_lib.Config.load(config_lib.config_path(workdirs['savae', 'default']))
  again = loop_lib.train(cfg.replace(strategy='mirrored'), workdirs['savae', 'default'],
                         load_data=load_data, make_networks=tiny_networks,
                         log=lambda line: None)
  report['reopened'] = {'steps': again.steps, 'ran_steps': again.ran_steps}
  # A global batch the 2 replicas cannot split evenly: one line, nothing written.
  odd = tempfile.mkdtemp()
  try:
    loop_lib.train(cfg.replace(strategy='mirrored', batch_size=3), odd, load_data=load_data,
                   make_networks=tiny_networks, log=lambda line: None)
    report['odd_batch'] = None
  except errors.UserError as e:
    report['odd_batch'] = [str(e), sorted(os.listdir(odd))]
  with open(out_path, 'w') as f:
    json.dump(report, f)


@pytest.fixture(scope='module')
def mirrored_report(tmp_path_factory):
  out = tmp_path_factory.mktemp('mirrored') / 'report.json'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
             PYTHONPATH=os.pathsep.join([_ROOT] + [p for p in [os.environ.get('PYTHONPATH')] if p]))
  started = time.monotonic()
  result = subprocess.run([sys.executable, os.path.abspath(__file__), 'mirrored', str(out)],
                          cwd=CWD, env=env, capture_output=True, text=True,
                          timeout=MIRRORED_TIMEOUT)
  assert result.returncode == 0, result.stderr[-3000:]
  print(f'mirrored vs default subprocess: {time.monotonic() - started:.1f} s')
  with open(out) as f:
    return json.load(f)


def test_mirrored_resumes_a_default_run_and_refuses_an_uneven_batch(mirrored_report):
  assert mirrored_report['reopened'] == {'steps': 12, 'ran_steps': 0}
  message, files = mirrored_report['odd_batch']
  assert message == ('batch_size=3 is not divisible by the 2 replicas of --strategy=mirrored; '
                     'choose a multiple of 2 (the global batch is split evenly)')
  assert files == []


@pytest.mark.parametrize('name', ['rme_freeze_earlier', 'savae'])
def test_mirrored_on_two_cpus_equals_default(name, mirrored_report):
  default, mirrored = mirrored_report[name]['default'], mirrored_report[name]['mirrored']
  assert default['replicas'] == 1 and mirrored['replicas'] == 2
  assert default['steps'] == mirrored['steps'] == 12
  worst = 0.0
  for a, b in zip(default['params'], mirrored['params']):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(b, a, rtol=PARAM_RTOL, atol=PARAM_ATOL)
    worst = max(worst, float(np.max(np.abs(a - b))))
  print(f'{name}: largest parameter difference {worst:.2e}')
  assert len(default['history']) == len(mirrored['history']) == 2
  for h1, h2 in zip(default['history'], mirrored['history']):
    assert h1['step'] == h2['step'] and h1['num_active'] == h2['num_active']
    for key in ('train_mixture_elbo', 'valid_mixture_elbo', 'weight_entropy'):
      np.testing.assert_allclose(h2[key], h1[key], rtol=METRIC_RTOL, err_msg=key)
  for key in ('test_log_likelihood', 'test_elbo'):
    np.testing.assert_allclose(mirrored[key], default[key], rtol=METRIC_RTOL, err_msg=key)


# ------------------------------------------------------ two workers, faults

WORKER_TIMEOUT = 90  # seconds a launch of two workers may take (15-45 s here)
SPE, EPOCHS = 4, 12  # 32 training images, batch 8
FLAGS = ['--method=rme', '--num_components=2', f'--epochs={EPOCHS}', '--epochs_per_component=2',
         '--batch_size=8', '--latent_dim=3', '--num_importance_samples=5', '--xla=false',
         '--strategy=multi_worker']


@pytest.fixture(scope='module')
def worker_data(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('data')
  rng = np.random.default_rng(0)
  arrays = {}
  for split, count in (('train', SPE * 8), ('valid', 12), ('test', 12)):
    arrays[f'x_{split}'] = ((rng.random([count, 784]) < 0.15) * 255).astype(np.uint8)
    arrays[f'y_{split}'] = np.zeros(count, np.int64)
  np.savez(data_dir / 'mnist.npz', **arrays)
  return str(data_dir)


@pytest.fixture(scope='module')
def reference_params(worker_data, tmp_path_factory):
  """The last checkpoint's values of the same config under `default`, run in this process."""
  from rec_vae_tf.data import sources as data_sources  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.training import loop as loop_lib  # pylint: disable=g-import-not-at-top
  cfg = config_lib.Config(method='rme', num_components=2, epochs=EPOCHS, epochs_per_component=2,
                          batch_size=8, latent_dim=3, num_importance_samples=5, xla=False,
                          data_dir=worker_data).validate()
  workdir = str(tmp_path_factory.mktemp('reference') / 'run')
  loop_lib.train(cfg, workdir, load_data=data_sources.load_mnist, log=lambda line: None)
  return _checkpoint_values(workdir)


def _checkpoint_values(workdir):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(workdir,
                                                                            'checkpoints')))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if 'save_counter' not in k and k != '_CHECKPOINTABLE_OBJECT_GRAPH'}


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  try:
    for s in sockets:
      s.bind(('127.0.0.1', 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


class _Workers:
  """Two launcher processes of one multi_worker run on 127.0.0.1 (fresh ports)."""

  def __init__(self, workdir, data_dir, log_dir, name, launcher='train', flags=None):
    addresses = [f'127.0.0.1:{p}' for p in _free_ports(2)]
    self.procs, self.logs = [], []
    for index in range(2):
      env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', TF_CONFIG=json.dumps(
          {'cluster': {'worker': addresses}, 'task': {'type': 'worker', 'index': index}}))
      out = str(log_dir / f'{name}_worker{index}.out')
      err = str(log_dir / f'{name}_worker{index}.err')
      with open(out, 'w') as stdout, open(err, 'w') as stderr:
        self.procs.append(subprocess.Popen(
            [sys.executable, '-m', f'launch.{launcher}', f'--workdir={workdir}',
             f'--data_dir={data_dir}', *(FLAGS if flags is None else flags)],
            cwd=CWD, env=env, stdout=stdout, stderr=stderr))
      self.logs.append((out, err))

  def wait(self, timeout=WORKER_TIMEOUT):
    deadline = time.monotonic() + timeout
    try:
      for proc in self.procs:
        proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
    finally:
      self.kill()
    return [p.returncode for p in self.procs]

  def kill(self):
    for proc in self.procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()

  def output(self, index):
    out, err = self.logs[index]
    with open(out) as f, open(err) as g:
      return f.read(), g.read()


def _latest_step(workdir):
  state = os.path.join(workdir, 'checkpoints', 'checkpoint')
  try:
    with open(state) as f:
      first = f.readline()
  except OSError:
    return None
  return int(first.rsplit('-', 1)[1].rstrip('"\n')) if 'ckpt-' in first else None


def _wait_for_checkpoint(workers, workdir, timeout=WORKER_TIMEOUT):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    step = _latest_step(workdir)
    if step:
      return step
    if any(p.poll() is not None for p in workers.procs):
      break
    time.sleep(0.02)
  workers.kill()
  raise AssertionError(f'no checkpoint from the workers: {workers.output(0)[1][-2000:]}')


def _assert_finished_like_reference(workers, workdir, resumed_step, reference_params):
  codes = workers.wait()
  for index in range(2):
    out, err = workers.output(index)
    assert codes[index] == 0, (index, err[-3000:])
    ckpt = os.path.join(workdir, 'checkpoints', f'ckpt-{resumed_step}')
    assert f'resumed from {ckpt}: step {resumed_step},' in out, out[-2000:]
    assert f'done: {SPE * EPOCHS} steps' in out, out[-2000:]
  with open(os.path.join(workdir, 'history.json')) as f:
    history = json.load(f)
  assert [h['step'] for h in history] == [SPE * (i + 1) for i in range(EPOCHS)]
  assert _latest_step(workdir) == SPE * EPOCHS
  values = _checkpoint_values(workdir)
  assert sorted(values) == sorted(reference_params)
  worst = 0.0
  for k, v in reference_params.items():
    np.testing.assert_allclose(values[k], v, rtol=WORKER_PARAM_RTOL, atol=WORKER_PARAM_ATOL,
                               err_msg=k)
    worst = max(worst, float(np.max(np.abs(np.asarray(values[k], np.float64) - v))))
  print(f'largest parameter difference from the default run: {worst:.2e}')
  # Only the chief wrote into the workdir: no other worker's files.
  # (.lock is the chief's lock file: rec_vae_tf/training/workdir_lock.py.)
  assert not [n for n in os.listdir(workdir)
              if (n.startswith('.') and n != '.lock') or 'worker' in n]


def test_two_workers_killed_with_sigkill_resume_from_the_checkpoint(
    worker_data, reference_params, tmp_path):
  started = time.monotonic()
  workdir = str(tmp_path / 'run')
  workers = _Workers(workdir, worker_data, tmp_path, 'first')
  try:
    step = _wait_for_checkpoint(workers, workdir)
    workers.procs[1].send_signal(signal.SIGKILL)  # worker 1 dies mid-run
    killed_at = _latest_step(workdir)
    # The chief's next collective fails once TensorFlow notices (2-10 s here).
    try:
      workers.procs[0].wait(timeout=20)
      chief = f'exited by itself with status {workers.procs[0].returncode}'
      # Its collective failed: one line, not a traceback.
      lines = [l for l in workers.output(0)[1].splitlines() if l.strip()]
      assert lines[-1].startswith('error: lost contact with another worker (') and (
          lines[-1].endswith('; restart every worker with the same command to resume')), lines[-3:]
      assert 'Traceback' not in workers.output(0)[1]
    except subprocess.TimeoutExpired:
      chief = 'still waiting after 20 s; killed'
  finally:
    workers.kill()
  resume_step = _latest_step(workdir)
  assert step and resume_step and resume_step < SPE * EPOCHS, (step, resume_step)
  print(f'worker 1 killed after checkpoint {killed_at}; chief {chief}; resuming at {resume_step}')
  assert not os.path.exists(os.path.join(workdir, 'checkpoints', 'ckpt-%d' % (SPE * EPOCHS) +
                                         '.index'))
  _assert_finished_like_reference(_Workers(workdir, worker_data, tmp_path, 'again'), workdir,
                                  resume_step, reference_params)
  print(f'two-worker SIGKILL test: {time.monotonic() - started:.1f} s')


def test_sigterm_to_one_worker_stops_both_at_one_step(worker_data, reference_params, tmp_path):
  started = time.monotonic()
  workdir = str(tmp_path / 'run')
  workers = _Workers(workdir, worker_data, tmp_path, 'first')
  try:
    _wait_for_checkpoint(workers, workdir)
    workers.procs[1].send_signal(signal.SIGTERM)  # a preemption notice to worker 1 only
    codes = workers.wait()
  finally:
    workers.kill()
  stopped = _latest_step(workdir)
  ckpt = os.path.join(workdir, 'checkpoints', f'ckpt-{stopped}')
  for index in range(2):
    _, err = workers.output(index)
    assert codes[index] == 143, (index, codes, err[-3000:])
    lines = [l for l in err.splitlines() if l.strip()]
    assert lines[-1] == (f'preempted at step {stopped}; checkpoint {ckpt}; rerun the same '
                         'command to resume'), err[-2000:]
    assert 'Traceback' not in err
  assert stopped < SPE * EPOCHS
  print(f'SIGTERM to worker 1: both stopped at step {stopped}')
  _assert_finished_like_reference(_Workers(workdir, worker_data, tmp_path, 'again'), workdir,
                                  stopped, reference_params)
  print(f'two-worker SIGTERM test: {time.monotonic() - started:.1f} s')


def test_two_workers_evaluate_like_one_device(worker_data, tmp_path):
  """launch/evaluate.py on two workers shards the test batches; the chief writes the result."""
  from rec_vae_tf.data import pipeline as data_lib  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.data import sources as data_sources  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.evaluation import likelihood  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.training import loop as loop_lib  # pylint: disable=g-import-not-at-top
  from rec_vae_tf.training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  cfg = config_lib.Config(method='rme', num_components=2, epochs=2, epochs_per_component=1,
                          batch_size=8, latent_dim=3, num_importance_samples=5, xla=False,
                          eval_batch_size=5, data_dir=worker_data).validate()
  workdir = str(tmp_path / 'run')
  loop_lib.train(cfg, workdir, load_data=data_sources.load_mnist, log=lambda line: None)
  # 12 test images in batches of 5, 5, 2: the last leaves one row per worker.
  workers = _Workers(workdir, worker_data, tmp_path, 'evaluate', launcher='evaluate',
                     flags=['--num_importance_samples=20', '--strategy=multi_worker'])
  codes = workers.wait()
  assert codes == [0, 0], workers.output(0)[1][-3000:] + workers.output(1)[1][-3000:]
  [written] = [n for n in os.listdir(workdir) if n.startswith('eval_')]
  with open(os.path.join(workdir, written)) as f:
    sharded = json.load(f)
  _, tr, _ = trainer_lib.restore_for_evaluation(workdir, log=lambda line: None)
  test = data_lib.make_eval_dataset(data_sources.load_mnist(worker_data).test, batch_size=5, seed=0)
  single = likelihood.evaluate(tr.method, test, tr.num_active.numpy(),
                               num_samples=20, chunk=cfg.eval_chunk, seed=0, xla=False)
  assert sharded['num_examples'] == single['num_examples'] == 12
  # launch/evaluate.py writes the result row (evaluation.rows); likelihood.evaluate its parts.
  for row_key, key in (('log_likelihood', 'test_log_likelihood'), ('elbo', 'test_elbo'),
                       ('weight_entropy', 'weight_entropy'),
                       ('log_likelihood_se', 'test_log_likelihood_se')):
    np.testing.assert_allclose(sharded[row_key], single[key], rtol=METRIC_RTOL, err_msg=key)
  print('two-worker evaluation:', sharded['log_likelihood'], 'one device:',
        single['test_log_likelihood'])


if __name__ == '__main__':
  if sys.argv[1:2] == ['mirrored']:
    _mirrored_vs_default(sys.argv[2])
  else:
    sys.exit(f'usage: {sys.argv[0]} mirrored OUT.json')
