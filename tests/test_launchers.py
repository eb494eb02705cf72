"""Dry runs of every launcher's real main, as `python -m launch.X` subprocesses.

Fixture data is a tiny MNIST-shaped npz of bars (64 train, 20 valid, 20 test
images), written into a temporary directory; nothing is downloaded. One tiny
training run is shared by the train, evaluate and export tests.
"""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from rec_vae_tf import config as config_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Under Bazel the launchers live in the runfiles root, the test's cwd.
CWD = os.getcwd() if os.path.isfile(os.path.join('launch', 'train.py')) else _ROOT
TIMEOUT = 180  # seconds per launcher call; a tiny run takes under 10 s

NUM_TRAIN, NUM_HELD_OUT, BATCH = 64, 20, 16
STEPS_PER_EPOCH = NUM_TRAIN // BATCH  # 4
TINY = ['--method=rme', '--num_components=2', '--epochs=2', '--epochs_per_component=1',
        f'--batch_size={BATCH}', '--latent_dim=3', '--num_importance_samples=5', '--xla=false']
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _bars(count, rng):
  """[count, 784] uint8 images of one horizontal or vertical bar, and labels 0/1."""
  images = np.zeros([count, 28, 28], np.uint8)
  labels = rng.integers(0, 2, count)
  for image, label in zip(images, labels):
    start, width = rng.integers(2, 23), rng.integers(2, 5)
    bar = (slice(start, start + width), slice(3, 25))
    image[bar if label else bar[::-1]] = rng.integers(160, 256)
  return images.reshape(count, 784), labels.astype(np.int64)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """A directory holding mnist.npz in the prepared format (x_valid included)."""
  path = tmp_path_factory.mktemp('data')
  rng = np.random.default_rng(0)
  arrays = {}
  for split, count in (('train', NUM_TRAIN), ('valid', NUM_HELD_OUT), ('test', NUM_HELD_OUT)):
    arrays[f'x_{split}'], arrays[f'y_{split}'] = _bars(count, rng)
  np.savez(path / 'mnist.npz', **arrays)
  return str(path)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
              MPLCONFIGDIR=str(tmp_path_factory.mktemp('matplotlib')))


def _launch(launcher, flags, env):
  """Runs `python -m launch.<launcher> FLAGS`; returns the CompletedProcess."""
  return subprocess.run([sys.executable, '-m', f'launch.{launcher}', *flags], cwd=CWD, env=env,
                        capture_output=True, text=True, timeout=TIMEOUT)


def _check_ok(result):
  assert result.returncode == 0, f'stdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}'
  return result.stdout


def _check_one_line_error(result):
  """Non-zero exit, no traceback, and the last stderr line is the only `error:` line."""
  assert result.returncode != 0, result.stdout
  assert 'Traceback' not in result.stderr, result.stderr[-4000:]
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert lines and lines[-1].startswith('error: '), result.stderr[-4000:]
  assert [l for l in lines if l.startswith('error:')] == [lines[-1]], result.stderr[-4000:]
  return lines[-1]


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _latest_step(workdir):
  path = tf.train.latest_checkpoint(os.path.join(workdir, 'checkpoints'))
  return None if path is None else int(path.rsplit('-', 1)[1])


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_dir, env):
  """(workdir, train flags, stdout) of one finished tiny RME run."""
  workdir = str(tmp_path_factory.mktemp('run') / 'rme')
  flags = [f'--workdir={workdir}', f'--data_dir={data_dir}'] + TINY
  return workdir, flags, _check_ok(_launch('train', flags, env))


def test_train_writes_run_directory(trained):
  workdir, _, stdout = trained
  cfg = config_lib.Config.load(os.path.join(workdir, 'config.json'))
  assert (cfg.method, cfg.num_components, cfg.latent_dim, cfg.xla) == ('rme', 2, 3, False)
  assert _latest_step(workdir) == 2 * STEPS_PER_EPOCH
  assert tf.train.latest_checkpoint(os.path.join(workdir, 'best')) is not None
  history = _read_json(os.path.join(workdir, 'history.json'))
  assert [h['step'] for h in history] == [4, 8]
  assert [h['num_active'] for h in history] == [1, 2]
  assert all(math.isfinite(h['valid_mixture_elbo']) for h in history)
  progress = [l for l in stdout.splitlines() if l.startswith('epoch ')]
  assert [l.split()[:4] for l in progress] == [['epoch', '1/2', 'step', '4'],
                                               ['epoch', '2/2', 'step', '8']], stdout
  assert all('train ELBO' in l and 'ETA' in l for l in progress), stdout


def test_evaluate_writes_importance_sampled_likelihood(trained, env):
  workdir, _, _ = trained
  k = 50
  stdout = _check_ok(_launch('evaluate', [f'--workdir={workdir}', f'--num_importance_samples={k}'],
                             env))
  [name] = [n for n in os.listdir(workdir) if n.startswith('eval_') and f'_K{k}_' in n and n.endswith('.json')]
  result = _read_json(os.path.join(workdir, name))
  ll, elbo = result['log_likelihood'], result['elbo']
  print(f'test log p(x) (K={k}) {ll:.3f}, test ELBO {elbo:.3f}')
  assert math.isfinite(ll) and math.isfinite(elbo)
  assert result['log_likelihood_se'] > 0 and result['method'] == 'rme'
  assert result['num_importance_samples'] == k
  assert result['num_examples'] == NUM_HELD_OUT
  assert ll >= elbo - 0.5
  assert f'K={k}' in stdout


def test_export_writes_versions_that_load(trained, data_dir, env, tmp_path):
  workdir, _, _ = trained
  base = str(tmp_path / 'exported')
  for version in ('1', '2'):
    stdout = _check_ok(_launch('export', [f'--workdir={workdir}', f'--export_dir={base}'], env))
    assert os.path.join(base, 'rme', version) in stdout
  assert sorted(os.listdir(base)) == ['models.config', 'rme']
  assert sorted(os.listdir(os.path.join(base, 'rme'))) == ['.lock', '1', '2']
  loaded = tf.saved_model.load(os.path.join(base, 'rme', '2'))
  images = np.load(os.path.join(data_dir, 'mnist.npz'))['x_test'][:3] / 255.0
  out = loaded.signatures['encode'](images=tf.constant(images, tf.float32))
  assert out['log_weights'].shape == (3, 2)
  assert out['loc'].shape == out['scale'].shape == (3, 2, 3)
  np.testing.assert_allclose(np.exp(out['log_weights'].numpy()).sum(-1), 1.0, atol=1e-5)


def test_train_rerun_resumes_without_more_steps(trained, env):
  workdir, flags, _ = trained
  history = _read_json(os.path.join(workdir, 'history.json'))
  stdout = _check_ok(_launch('train', flags, env))
  assert 'resumed from' in stdout and 'step 8' in stdout, stdout
  assert not [l for l in stdout.splitlines() if l.startswith('epoch ')], stdout
  assert _read_json(os.path.join(workdir, 'history.json')) == history
  assert _latest_step(workdir) == 8


def test_train_refuses_a_different_config(trained, env):
  workdir, flags, _ = trained
  before = _read_json(os.path.join(workdir, 'config.json'))
  message = _check_one_line_error(_launch('train', flags + ['--latent_dim=4'], env))
  assert 'latent_dim' in message
  assert _read_json(os.path.join(workdir, 'config.json')) == before


@pytest.mark.parametrize('flag, field', [
    ('--num_components=0', 'num_components'),
    ('--kl_weight=1.5', 'kl_weight'),
    ('--data_dir=/does/not/exist', '/does/not/exist'),
])
def test_train_bad_input_is_one_line_error(flag, field, data_dir, env, tmp_path):
  workdir = str(tmp_path / 'run')
  flags = [f'--workdir={workdir}', f'--data_dir={data_dir}'] + TINY + [flag]
  message = _check_one_line_error(_launch('train', flags, env))
  assert field in message
  if os.path.isdir(workdir):  # nothing was trained or written
    names = [n for _, _, files in os.walk(workdir) for n in files]
    assert not [n for n in names if n.startswith('ckpt') or n == 'checkpoint'], names
    assert _latest_step(workdir) is None


def test_main_compares_plots_and_exports(data_dir, env, tmp_path):
  workdir = str(tmp_path / 'main')
  flags = [f'--workdir={workdir}', f'--data_dir={data_dir}', '--methods=rme,vae',
           '--test_examples=8'] + TINY
  _check_ok(_launch('main', flags, env))
  rows = _read_json(os.path.join(workdir, 'results.json'))
  assert [r['method'] for r in rows] == ['rme', 'vae']
  for row in rows:
    for key in ('log_likelihood', 'log_likelihood_se', 'num_importance_samples', 'elbo',
                'num_parameters', 'train_seconds'):
      assert key in row and math.isfinite(row[key]), (key, row)
    assert row['num_importance_samples'] == 5
    assert row['num_examples'] == 8 and row['split'] == 'test'
  assert [r['num_components'] for r in rows] == [2, 1]
  for name in ('samples.png', 'reconstructions.png', 'training_curves.png', 'weights.png'):
    with open(os.path.join(workdir, name), 'rb') as f:
      head = f.read(24)
    assert head[:8] == PNG_MAGIC and head[12:16] == b'IHDR', name
    width, height = int.from_bytes(head[16:20], 'big'), int.from_bytes(head[20:24], 'big')
    assert width > 0 and height > 0, name
  assert os.path.isfile(os.path.join(workdir, 'export', 'rme', '1', 'saved_model.pb'))


def test_train_resumes_after_sigkill(data_dir, env, tmp_path):
  # Epochs after the first take well under 0.1 s; enough remain after the
  # second for the kill to land mid-run. history.json is written just before
  # each checkpoint, so the kill usually finds history one epoch ahead of the
  # latest checkpoint: the resumed run must drop that entry, not repeat it.
  epochs, components = 24, 3
  total = epochs * STEPS_PER_EPOCH
  workdir = str(tmp_path / 'killed')
  flags = [f'--workdir={workdir}', f'--data_dir={data_dir}', f'--num_components={components}',
           '--epochs_per_component=2', f'--epochs={epochs}'] + [
               f for f in TINY if not f.startswith(('--num_components', '--epochs'))]
  history_path = os.path.join(workdir, 'history.json')
  with open(tmp_path / 'first.out', 'w') as out:
    proc = subprocess.Popen([sys.executable, '-m', 'launch.train', *flags], cwd=CWD, env=env,
                            stdout=out, stderr=subprocess.STDOUT)
    try:
      deadline = time.monotonic() + TIMEOUT
      while True:
        assert proc.poll() is None, 'train.py ended before it was killed; raise --epochs'
        assert time.monotonic() < deadline, 'no history.json with 2 epochs in time'
        try:
          if len(_read_json(history_path)) >= 2:
            break
        except (OSError, ValueError):
          pass
        time.sleep(0.02)
      proc.send_signal(signal.SIGKILL)
      assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  killed_at = _latest_step(workdir)
  print(f'killed with checkpoint at step {killed_at} of {total}')
  assert killed_at is not None and STEPS_PER_EPOCH <= killed_at < total

  stdout = _check_ok(_launch('train', flags, env))
  assert f'resumed from {workdir}' in stdout and f'ckpt-{killed_at}: step {killed_at},' in stdout, (
      stdout)
  history = _read_json(history_path)
  assert [h['step'] for h in history] == list(range(STEPS_PER_EPOCH, total + 1, STEPS_PER_EPOCH))
  assert history[-1]['num_active'] == components
  assert _latest_step(workdir) == total


def _wait_for(condition, proc, what, timeout=TIMEOUT):
  deadline = time.monotonic() + timeout
  while not condition():
    assert proc.poll() is None, f'the process ended before {what}'
    assert time.monotonic() < deadline, f'no {what} in time'
    time.sleep(0.05)


def _lock_text(workdir):
  try:
    with open(os.path.join(workdir, '.lock')) as f:
      return f.read()
  except OSError:
    return ''


def test_one_writer_per_workdir_and_a_killed_holder_leaves_no_lock(data_dir, env, tmp_path):
  workdir = str(tmp_path / 'job' / 'rme')  # also the main job's RME run in tmp_path/job
  flags = [f'--workdir={workdir}', f'--data_dir={data_dir}', '--epochs=100000'] + [
      f for f in TINY if not f.startswith('--epochs=')]
  first = subprocess.Popen([sys.executable, '-m', 'launch.train', *flags], cwd=CWD, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  third = None
  try:
    _wait_for(lambda: _lock_text(workdir).startswith(f'{first.pid} '), first, 'lock')
    _wait_for(lambda: os.path.exists(os.path.join(workdir, 'history.json')), first, 'history')
    # A second training on the same workdir: refused at once (before TensorFlow loads).
    start = time.monotonic()
    second = _launch('train', flags, env)
    message = _check_one_line_error(second)
    assert second.returncode == 2
    assert message == (f'error: {os.path.abspath(workdir)} is in use by another training process '
                       f'(pid {first.pid} on host {socket.gethostname()}); wait for it or use '
                       'another --workdir'), message
    print(f'refused in {time.monotonic() - start:.1f} s')
    # The main job locks its directory, and each run in it (loop.train) too: refused there.
    main = _launch('main', [f'--workdir={tmp_path / "job"}', f'--data_dir={data_dir}',
                            '--methods=rme'] + TINY[1:], env)
    assert _check_one_line_error(main) == message
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=30) == -signal.SIGKILL
    # The kernel released the lock with the process: the next start trains (and resumes).
    steps = _latest_step(workdir) or 0
    third = subprocess.Popen([sys.executable, '-m', 'launch.train', *flags], cwd=CWD, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (_latest_step(workdir) or 0) > steps, third, 'a checkpoint after resuming')
    assert _lock_text(workdir).startswith(f'{third.pid} ')
    third.send_signal(signal.SIGTERM)
    _, err = third.communicate(timeout=60)
    assert third.returncode == 143, err[-2000:]  # preempted after training: it held the lock
  finally:
    for proc in (first, third):
      if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()


def test_memory_beyond_the_machine_is_refused_before_anything_is_written(data_dir, env, tmp_path):
  workdir = tmp_path / 'huge'
  result = _launch('train', [f'--workdir={workdir}', f'--data_dir={data_dir}',
                             '--latent_dim=100000000'] + TINY[:1], env)
  message = _check_one_line_error(result)
  assert result.returncode == 2 and message.startswith('error: the config needs about '), message
  assert 'more than this machine' in message and 'latent_dim=100000000' in message
  assert not workdir.exists()


def test_out_of_memory_inside_a_launcher_is_one_line(capsys):
  from launch import common  # pylint: disable=g-import-not-at-top
  def main(argv):
    del argv
    raise tf.errors.ResourceExhaustedError(
        None, None, 'OOM when allocating tensor with shape[4,200,100000000]\nmore detail')
  with pytest.raises(SystemExit) as e:
    common.run(main)(['prog'])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith(
      'error: out of memory (ResourceExhaustedError: OOM when allocating tensor with '
      'shape[4,200,100000000]); the sizes that drive it: '), err
  assert err.rstrip().endswith('the last good checkpoint is kept')


def test_export_names_the_model_after_the_method(data_dir, env, tmp_path):
  workdir, base = str(tmp_path / 'vae'), str(tmp_path / 'exports')
  _check_ok(_launch('train', [f'--workdir={workdir}', f'--data_dir={data_dir}', '--method=vae',
                              '--epochs=1', f'--batch_size={BATCH}', '--latent_dim=3',
                              '--xla=false'], env))
  stdout = _check_ok(_launch('export', [f'--workdir={workdir}', f'--export_dir={base}'], env))
  assert f"exported version 1 of model 'vae' to {os.path.join(base, 'vae', '1')}" in stdout
  assert 'posterior served:' in stdout
  assert sorted(os.listdir(base)) == ['models.config', 'vae']


def test_main_runs_the_semi_amortized_baselines(data_dir, env, tmp_path):
  workdir = str(tmp_path / 'savae')
  flags = [f'--workdir={workdir}', f'--data_dir={data_dir}', '--methods=savae,vae_svi',
           '--test_examples=8', '--epochs=1', '--refine_steps=2'] + [
               f for f in TINY if not f.startswith('--epochs')]
  stdout = _check_ok(_launch('main', flags, env))
  rows = _read_json(os.path.join(workdir, 'results.json'))
  assert [r['method'] for r in rows] == ['savae', 'vae_svi']
  for row in rows:
    assert row['num_components'] == 1 and row['config']['refine_steps'] == 2
    for key in ('log_likelihood', 'elbo', 'inference_ms_per_batch'):
      assert math.isfinite(row[key]), (key, row)
  assert '| vae+svi | 1 |' in stdout
  assert not os.path.exists(os.path.join(workdir, 'export'))  # the export is RME's only


def test_reproduce_runs_a_grid_resumes_and_rejects_bad_flags(data_dir, env, tmp_path):
  workdir = str(tmp_path / 'grid')
  flags = [f'--data_dir={data_dir}', f'--workdir={workdir}', '--methods=rme,vae,iaf',
           '--components=2', '--seeds=1', '--epochs=1', f'--batch_size={BATCH}',
           '--num_importance_samples=5', '--test_examples=10', '--xla=false']
  out = _check_ok(_launch('reproduce', flags, env))
  assert '4 cells, 0 already finished' in out  # rme at M=2 and the preset's M=4, vae, iaf
  for name in ('cells.json', 'cells.csv', 'table.md', 'll_vs_components.png',
               'll_vs_inference_time.png', 'samples.png', 'reconstructions.png'):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  with open(os.path.join(workdir, 'cells.json')) as f:
    rows = json.load(f)
  assert sorted((r['variant'], r['num_components']) for r in rows) == [
      ('iaf', 1), ('rme', 2), ('rme', 4), ('vae', 1)]
  assert all(r['num_examples'] == 10 and r['num_importance_samples'] == 5 for r in rows)
  again = _check_ok(_launch('reproduce', flags, env))
  assert '4 cells, 4 already finished' in again and 'training' not in again
  # --reports_only: a folder holding only cells.json (one cell dropped) rebuilds the table.
  results = tmp_path / 'results'
  os.makedirs(results)
  (results / 'cells.json').write_text(json.dumps(rows[1:]))
  rebuilt = _check_ok(_launch('reproduce', flags[:1] + [f'--workdir={results}', '--reports_only']
                              + flags[2:], env))
  assert f'1 of 4 cells not finished, left out: {rows[0]["cell"]}' in rebuilt
  with open(os.path.join(workdir, 'table.md')) as f:
    table = f.read().splitlines()
  rebuilt_table = (results / 'table.md').read_text().splitlines()
  assert len(rebuilt_table) > 2 and set(rebuilt_table) <= set(table)
  assert not os.path.exists(results / 'runs')  # nothing trained
  line = _check_one_line_error(_launch(
      'reproduce', [f'--workdir={tmp_path / "empty"}', '--reports_only'] + flags[2:], env))
  assert 'workdir' in line
  for bad in ('--preset=nope', '--methods=rme,nope', '--components=two', '--seeds=0',
              f'--step_costs={tmp_path}/no_benchmark.json'):
    line = _check_one_line_error(_launch('reproduce', flags + [bad], env))
    assert bad.split('=')[0].lstrip('-') in line
