"""Surviving faults: SIGTERM, SIGKILL, corrupt checkpoints, full disks, failed writes; determinism.

In-process tests use the tiny data and networks of tests/test_trainer.py (12
pixels, 6 steps per epoch). The subprocess tests run the real launch/train.py
on a tiny MNIST-shaped npz with 110 steps per epoch, so that a chunk of at most
loop.MAX_CHUNK_STEPS = 100 steps can end inside an epoch.
"""
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from rec_vae_tf import config as config_lib
from rec_vae_tf.data import sources as data_sources
from rec_vae_tf import errors
from rec_vae_tf.models import networks
from rec_vae_tf.training import trainer as trainer_lib
from rec_vae_tf.training import loop as loop_lib
from rec_vae_tf.training import runstate

P = 12  # pixels
N_TRAIN, BATCH = 24, 4  # 6 steps per epoch


def _load_data(data_dir, train_examples=None):
  del data_dir, train_examples
  rng = np.random.default_rng(0)
  images = (rng.random([N_TRAIN + 12, P]) * 255).astype(np.uint8)
  return data_sources.Splits(train=images[:N_TRAIN], valid=images[N_TRAIN:N_TRAIN + 6],
                             test=images[N_TRAIN + 6:])


def _tiny_networks(num_components, hidden_units, latent_dim, eps_mode, seed, num_pixels):
  del hidden_units
  return networks.build_networks(num_components, (8,), latent_dim, eps_mode, seed, num_pixels)


def _cfg(**kw):
  base = dict(num_components=2, latent_dim=2, epochs=2, epochs_per_component=1.0,
              batch_size=BATCH, eval_batch_size=4, learning_rate=1e-2, xla=False, seed=1,
              deterministic=True)
  base.update(kw)
  return config_lib.Config(**base).validate()


def _train(cfg, workdir, log=lambda s: None, **kw):
  return loop_lib.train(cfg, str(workdir), load_data=_load_data, make_networks=_tiny_networks,
                        log=log, **kw)


def _checkpoint_values(path):
  """{name: array} of every variable in a checkpoint but the save counter."""
  reader = tf.train.load_checkpoint(path)
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if 'save_counter' not in k and k != '_CHECKPOINTABLE_OBJECT_GRAPH'}


def _assert_same_values(a, b):
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _without_times(history):
  return [{k: v for k, v in h.items() if k not in ('epoch_seconds', 'train_seconds')}
          for h in history]


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _ckpt_dir(workdir):
  return os.path.join(str(workdir), runstate.CHECKPOINT_DIR)


# ------------------------------------------------------------------ config


def test_deterministic_is_a_validated_config_field(tmp_path):
  assert config_lib.Config().deterministic is False
  with pytest.raises(errors.ConfigError, match=r'deterministic=.yes.; allowed: true or false'):
    config_lib.Config(deterministic='yes').validate()
  values = config_lib.Config().to_dict()
  del values['deterministic']  # a config.json written before the field existed
  assert config_lib.Config.from_dict(values).validate().deterministic is False


# --------------------------------------------------------------- preemption


@pytest.mark.parametrize('trigger, stopped_at, partial', [
    # SIGTERM while step 6's chunk starts: the chunk [6, 8) ends inside epoch 2.
    ('step 6: component 2', 8, True),
    # SIGTERM right after epoch 1 was checkpointed: stop before epoch 2.
    ('epoch 1/2', 6, False),
])
def test_sigterm_saves_and_a_rerun_matches_an_uninterrupted_run(
    trigger, stopped_at, partial, tmp_path, monkeypatch):
  monkeypatch.setattr(loop_lib, 'MAX_CHUNK_STEPS', 4)  # chunks end inside 6-step epochs
  cfg = _cfg()
  full = _train(cfg, tmp_path / 'full')
  full_values = _checkpoint_values(tf.train.latest_checkpoint(_ckpt_dir(tmp_path / 'full')))

  def on_log(line):  # a scheduler's SIGTERM, delivered at a known point
    if line.startswith(trigger):
      os.kill(os.getpid(), signal.SIGTERM)

  def previous_handler(signum, frame):
    raise AssertionError('the previous SIGTERM handler ran during training')

  old = signal.signal(signal.SIGTERM, previous_handler)
  try:
    with pytest.raises(errors.Preempted) as e:
      _train(cfg, tmp_path / 'run', log=on_log)
    # Training put back the handler it found and the op-determinism setting.
    assert signal.getsignal(signal.SIGTERM) is previous_handler
    assert not tf_config.is_op_determinism_enabled()
  finally:
    signal.signal(signal.SIGTERM, old)
  ckpt = os.path.join(_ckpt_dir(tmp_path / 'run'), f'ckpt-{stopped_at}')
  assert str(e.value) == (f'preempted at step {stopped_at}; checkpoint {ckpt}; '
                          'rerun the same command to resume')
  assert e.value.step == stopped_at and not isinstance(e.value, errors.UserError)
  assert tf.train.latest_checkpoint(_ckpt_dir(tmp_path / 'run')) == ckpt
  partial_file = tmp_path / 'run' / runstate.PARTIAL_EPOCH_FILE
  assert partial_file.exists() == partial
  # The history holds finished epochs only; the interrupted one's sums wait in the file.
  assert [h['step'] for h in _read_json(tmp_path / 'run' / 'history.json')] == [6]

  lines = []
  resumed = _train(cfg, tmp_path / 'run', log=lines.append)
  assert any(l.startswith(f'resumed from {ckpt}: step {stopped_at},') for l in lines), lines
  assert resumed.steps == 12 and not partial_file.exists()
  assert _without_times(resumed.history) == _without_times(full.history)
  _assert_same_values(
      _checkpoint_values(tf.train.latest_checkpoint(_ckpt_dir(tmp_path / 'run'))), full_values)


def test_chunks_end_at_multiples_of_the_cap(tmp_path, monkeypatch):
  monkeypatch.setattr(loop_lib, 'MAX_CHUNK_STEPS', 4)
  sizes = []

  class Spy(trainer_lib.Trainer):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      compiled = self.train_steps
      def train_steps(iterator, num_steps, *rest):
        sizes.append(int(num_steps))
        return compiled(iterator, num_steps, *rest)
      self.train_steps = train_steps

  monkeypatch.setattr(trainer_lib, 'Trainer', Spy)
  _train(_cfg(), tmp_path / 'run')
  # Epoch ends (6, 12), the activation at 6 and the multiples of 4 cut the 12 steps.
  assert sizes == [4, 2, 2, 4]


# ------------------------------------------------------- corrupt checkpoints


def _corrupt(prefix, how):
  data, index = prefix + '.data-00000-of-00001', prefix + '.index'
  if how == 'truncated data':
    with open(data, 'rb') as f:
      content = f.read()
    with open(data, 'wb') as f:
      f.write(content[:len(content) // 2])
  elif how == 'garbage data':  # same size, so only the checksums can tell
    size = os.path.getsize(data)
    with open(data, 'r+b') as f:
      f.seek(size // 3)
      f.write(b'\xa5' * 64)
  elif how == 'garbage index':
    with open(index, 'wb') as f:
      f.write(b'not a checkpoint index' * 8)
  elif how == 'empty index':
    open(index, 'wb').close()
  elif how == 'missing files':
    os.remove(index)
    os.remove(data)
  else:
    raise ValueError(how)


@pytest.fixture(scope='module')
def two_epoch_run(tmp_path_factory):
  """(workdir, values of ckpt-12) of a finished 2-epoch run; tests copy it."""
  workdir = tmp_path_factory.mktemp('two_epochs') / 'run'
  _train(_cfg(), workdir)
  return workdir, _checkpoint_values(os.path.join(_ckpt_dir(workdir), 'ckpt-12'))


def _copy_run(two_epoch_run, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(two_epoch_run[0], workdir)  # the state file holds relative paths
  return workdir


@pytest.mark.parametrize('how', ['truncated data', 'garbage data', 'garbage index', 'empty index',
                                 'missing files'])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(how, two_epoch_run, tmp_path):
  workdir = _copy_run(two_epoch_run, tmp_path)
  latest = os.path.join(_ckpt_dir(workdir), 'ckpt-12')
  _corrupt(latest, how)
  lines = []
  result = _train(_cfg(), workdir, log=lines.append)
  warnings = [l for l in lines if l.startswith('warning:')]
  assert len(warnings) == 1 and f'checkpoint {latest} is unreadable (' in warnings[0], lines
  assert '\n' not in warnings[0]
  assert f'resumed from {os.path.join(_ckpt_dir(workdir), "ckpt-6")}: step 6, 1 active components' in lines
  # Epoch 2 redone from ckpt-6: the same parameters as before the damage.
  assert result.ran_steps == 6 and result.steps == 12
  _assert_same_values(_checkpoint_values(latest), two_epoch_run[1])


def test_no_readable_checkpoint_is_one_line(two_epoch_run, tmp_path):
  workdir = _copy_run(two_epoch_run, tmp_path)
  for step, how in ((12, 'garbage index'), (6, 'truncated data')):
    _corrupt(os.path.join(_ckpt_dir(workdir), f'ckpt-{step}'), how)
  with pytest.raises(errors.UserError) as e:
    _train(_cfg(), workdir)
  message = str(e.value)
  assert message == (f'no readable checkpoint in {_ckpt_dir(workdir)} (tried ckpt-12, ckpt-6); '
                     'move that directory away to start the run afresh')


def test_garbled_state_file_finds_the_checkpoints_on_disk(two_epoch_run, tmp_path):
  workdir = _copy_run(two_epoch_run, tmp_path)
  with open(os.path.join(_ckpt_dir(workdir), 'checkpoint'), 'w') as f:
    f.write('model_checkpoint_path: {{{ garbage')
  lines = []
  result = _train(_cfg(), workdir, log=lines.append)
  assert result.ran_steps == 0 and result.steps == 12  # finished: not restarted from scratch
  assert any(l.startswith('resumed from') and 'ckpt-12: step 12' in l for l in lines), lines


def test_evaluation_restores_skip_a_corrupt_latest_and_refuse_a_corrupt_best(
    two_epoch_run, tmp_path):
  workdir = _copy_run(two_epoch_run, tmp_path)
  _corrupt(os.path.join(_ckpt_dir(workdir), 'ckpt-12'), 'garbage data')
  lines = []
  _, tr, path = trainer_lib.restore_for_evaluation(str(workdir), which='latest',
                                                   make_networks=_tiny_networks, num_pixels=P,
                                                   log=lines.append)
  assert path.endswith('ckpt-6') and int(tr.step.numpy()) == 6
  assert len(lines) == 1 and lines[0].startswith('warning: checkpoint ')
  best = tf.train.latest_checkpoint(str(workdir / runstate.BEST_DIR))
  _corrupt(best, 'truncated data')
  with pytest.raises(errors.UserError, match=r'^checkpoint .*best/ckpt-\d+ is unreadable \(') as e:
    trainer_lib.restore_for_evaluation(str(workdir), make_networks=_tiny_networks, num_pixels=P)
  assert '\n' not in str(e.value)


# --------------------------------------------------------------- full disks


def _files(workdir):
  return sorted(os.path.relpath(os.path.join(root, f), workdir)
                for root, _, files in os.walk(workdir) for f in files)


def test_full_disk_fails_before_training(tmp_path, monkeypatch):
  free = 2 << 20
  monkeypatch.setattr(runstate.shutil, 'disk_usage',
                      lambda path: type('Usage', (), {'total': 1 << 30, 'used': 0, 'free': free}))
  with pytest.raises(errors.UserError) as e:
    _train(_cfg(), tmp_path / 'run')
  assert str(e.value).startswith(f'not enough free space in {tmp_path / "run"}: 2.0 MiB free, '
                                 'the run needs about ')
  # No step taken, nothing saved (.lock: the workdir lock's file, empty once released).
  assert _files(tmp_path / 'run') == ['.lock', 'config.json']
  assert os.path.getsize(tmp_path / 'run' / '.lock') == 0


def test_no_space_for_the_write_probe_is_one_line(tmp_path, monkeypatch):
  real_open = open

  def full_disk_open(path, *args, **kwargs):
    if str(path).endswith('.write_probe'):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr(config_lib, 'open', full_disk_open, raising=False)
  with pytest.raises(errors.UserError,
                     match=r'^workdir .* is not writable: No space left on device$'):
    _train(_cfg(), tmp_path / 'run')


def test_failed_history_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
  _train(_cfg(), tmp_path, stop_after_steps=6)
  real = config_lib.write_json_atomic

  def full_disk(path, value, **kwargs):
    if path.endswith('history.json'):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(path, value, **kwargs)

  monkeypatch.setattr(config_lib, 'write_json_atomic', full_disk)
  ckpt6 = os.path.join(_ckpt_dir(tmp_path), 'ckpt-6')
  with pytest.raises(errors.UserError) as e:
    _train(_cfg(), tmp_path)
  assert str(e.value) == (f'cannot write {tmp_path / "history.json"} (No space left on device); '
                          f'{ckpt6} is kept; free space (or fix permissions) and rerun the same '
                          'command to resume')
  assert tf.train.latest_checkpoint(_ckpt_dir(tmp_path)) == ckpt6


def test_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
  """A real write failure inside TensorFlow's C++ writer: a file size limit (EFBIG)."""
  _train(_cfg(), tmp_path, stop_after_steps=6)
  ckpt_dir = _ckpt_dir(tmp_path)
  ckpt6 = os.path.join(ckpt_dir, 'ckpt-6')
  before = _checkpoint_values(ckpt6)
  data_size = os.path.getsize(ckpt6 + '.data-00000-of-00001')
  history_size = os.path.getsize(tmp_path / 'history.json')
  limit = data_size // 2
  assert 2 * history_size < limit  # history.json (written first) still fits
  soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
  old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
  try:
    with pytest.raises(errors.UserError) as e:
      _train(_cfg(), tmp_path)
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, old_handler)
  message = str(e.value)
  assert message.startswith('cannot write the checkpoint at step 12 (') and (
      'File too large' in message), message
  assert message.endswith(f'; {ckpt6} is kept; free space (or fix permissions) and rerun the '
                          'same command to resume') and '\n' not in message
  assert tf.train.latest_checkpoint(ckpt_dir) == ckpt6
  assert not [n for n in os.listdir(ckpt_dir) if n.startswith('ckpt-12')]  # no half-written files
  _assert_same_values(_checkpoint_values(ckpt6), before)
  # With room again, the same command resumes from ckpt-6 and finishes.
  assert _train(_cfg(), tmp_path).steps == 12


# ------------------------------------------------ the real launcher, killed


LAUNCH_TIMEOUT = 120
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CWD = os.getcwd() if os.path.isfile(os.path.join('launch', 'train.py')) else _ROOT
SPE = 110  # steps per epoch: 440 images, batch 4
FLAGS = ['--method=rme', '--num_components=2', '--epochs=6', '--epochs_per_component=1',
         '--batch_size=4', '--latent_dim=3', '--num_importance_samples=5', '--xla=false',
         '--deterministic']


@pytest.fixture(scope='module')
def launch_env(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('data')
  rng = np.random.default_rng(0)
  arrays = {}
  for split, count in (('train', 4 * SPE), ('valid', 20), ('test', 20)):
    arrays[f'x_{split}'] = ((rng.random([count, 784]) < 0.15) * 255).astype(np.uint8)
    arrays[f'y_{split}'] = np.zeros(count, np.int64)
  np.savez(data_dir / 'mnist.npz', **arrays)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
             MPLCONFIGDIR=str(tmp_path_factory.mktemp('matplotlib')))
  return [f'--data_dir={data_dir}'] + FLAGS, env


def _launch_train(workdir, launch_env):
  flags, env = launch_env
  return subprocess.run([sys.executable, '-m', 'launch.train', f'--workdir={workdir}', *flags],
                        cwd=CWD, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)


def _final_state(workdir):
  """(history without times, last checkpoint's values, best checkpoint's values)."""
  history = _without_times(_read_json(os.path.join(workdir, 'history.json')))
  return (history, _checkpoint_values(tf.train.latest_checkpoint(_ckpt_dir(workdir))),
          _checkpoint_values(tf.train.latest_checkpoint(os.path.join(workdir, 'best'))))


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory, launch_env):
  workdir = str(tmp_path_factory.mktemp('reference') / 'run')
  result = _launch_train(workdir, launch_env)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_same_command_twice_is_bit_identical(reference_run, launch_env, tmp_path):
  workdir = str(tmp_path / 'again')
  result = _launch_train(workdir, launch_env)
  assert result.returncode == 0, result.stderr[-3000:]
  (h1, last1, best1), (h2, last2, best2) = _final_state(reference_run), _final_state(workdir)
  assert len(h1) == 6 and h1 == h2
  _assert_same_values(last1, last2)
  _assert_same_values(best1, best2)


def test_killed_at_random_points_and_resumed_equals_an_uninterrupted_run(
    reference_run, launch_env, tmp_path):
  """SIGTERM, SIGKILL, SIGTERM at random points of training; then run to the end.

  Each signal comes after training has started (the first chunk includes tracing, about
  2 s), 0, 1 or 2 finished epochs later, plus 0-0.4 s (an epoch takes about 0.3 s):
  kills land at different steps, within and between epochs.
  """
  flags, env = launch_env
  workdir = str(tmp_path / 'killed')
  rng = np.random.default_rng(6)
  outcomes = []
  for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGTERM):
    proc = subprocess.Popen([sys.executable, '-m', 'launch.train', f'--workdir={workdir}', *flags],
                            cwd=CWD, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
      started, epochs_to_wait = False, int(rng.integers(0, 3))
      for line in proc.stdout:  # the SIGTERM handler is installed once training starts
        started = started or line.startswith('training ')
        if started and line.startswith('epoch '):
          epochs_to_wait -= 1
        if started and epochs_to_wait <= 0:
          break
      if started:
        time.sleep(rng.uniform(0.0, 0.4))
        sent = time.monotonic()
        proc.send_signal(sig)
      _, stderr = proc.communicate(timeout=LAUNCH_TIMEOUT)
      response = time.monotonic() - sent if started else None
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    latest = tf.train.latest_checkpoint(_ckpt_dir(workdir))
    outcomes.append((signal.Signals(sig).name, proc.returncode, latest and latest.rsplit('-', 1)[1],
                     response and round(response, 2)))
    if sig == signal.SIGTERM and proc.returncode == 143:
      lines = [l for l in stderr.splitlines() if l.strip()]
      assert lines[-1] == (f'preempted at step {latest.rsplit("-", 1)[1]}; checkpoint {latest}; '
                           'rerun the same command to resume'), stderr[-2000:]
      assert 'Traceback' not in stderr
    else:
      assert proc.returncode in (0, -signal.SIGKILL), stderr[-3000:]
  print('signal, exit status, checkpoint step, seconds from signal to exit:', outcomes)
  # Most signals must land mid-run, or the test proves little.
  assert sum(rc in (143, -signal.SIGKILL) for _, rc, _, _ in outcomes) >= 2, outcomes

  result = _launch_train(workdir, launch_env)
  assert result.returncode == 0, result.stderr[-3000:]
  history, last, best = _final_state(workdir)
  ref_history, ref_last, ref_best = _final_state(reference_run)
  assert [h['step'] for h in history] == [SPE * (i + 1) for i in range(6)]
  assert history == ref_history
  _assert_same_values(last, ref_last)
  _assert_same_values(best, ref_best)
