"""The workdir lock (rec_vae_tf/training/workdir_lock.py): one holder, released by the kernel.

The launchers' use of it (a second training refused, a SIGKILLed holder leaving
no lock) is tested end to end in tests/test_launchers.py.
"""
import os
import signal
import socket
import subprocess
import sys

import pytest

from rec_vae_tf.training import workdir_lock

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HOLDER = ('import sys, time\n'
           'from rec_vae_tf.training import workdir_lock\n'
           'workdir_lock.acquire(sys.argv[1])\n'
           'print("held", flush=True)\n'
           'time.sleep(120)\n')


def _lock_file(directory):
  return os.path.join(directory, workdir_lock.LOCK_FILE)


def test_nested_holds_in_one_process_and_an_empty_file_after_release(tmp_path):
  run = tmp_path / 'run'
  with workdir_lock.hold(str(run)):
    (run / 'config.json').write_text('{}')
    with open(_lock_file(run)) as f:
      assert f.read() == f'{os.getpid()} {socket.gethostname()}\n'
    with workdir_lock.hold(str(run)):  # the main job's launcher, then loop.train
      assert workdir_lock.is_held(str(run))
    assert workdir_lock.is_held(str(run))
  assert not workdir_lock.is_held(str(run))
  assert os.path.getsize(_lock_file(run)) == 0  # no holder
  assert sorted(os.listdir(run)) == ['.lock', 'config.json']


def test_a_lock_file_alone_is_removed_by_its_creator(tmp_path):
  with workdir_lock.hold(str(tmp_path)):
    pass  # failed before writing anything
  assert os.listdir(tmp_path) == []
  with workdir_lock.hold(str(tmp_path), enabled=False):
    assert not workdir_lock.is_held(str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_another_process_is_refused_until_the_holder_is_killed(tmp_path):
  run = str(tmp_path / 'run')
  holder = subprocess.Popen([sys.executable, '-c', _HOLDER, run], cwd=_ROOT,
                            stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=_ROOT))
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(workdir_lock.WorkdirInUse) as e:
      workdir_lock.acquire(run)
    assert str(e.value) == (
        f'{run} is in use by another training process (pid {holder.pid} on host '
        f'{socket.gethostname()}); wait for it or use another --workdir')
    with pytest.raises(workdir_lock.WorkdirInUse, match='another export process .* use another '
                       '--export_dir or --model_name'):
      workdir_lock.acquire(run, flag='--export_dir or --model_name', what='export')
    assert not workdir_lock.is_held(run)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    # The kernel released it; the stale pid in the file does no harm.
    with workdir_lock.hold(run):
      assert workdir_lock.is_held(run)
  finally:
    if holder.poll() is None:
      holder.kill()
      holder.wait()
