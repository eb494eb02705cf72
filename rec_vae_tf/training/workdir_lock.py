"""One writer per directory: an OS-level exclusive lock on `<dir>/.lock`.

Every program that writes checkpoints, history or versions holds it for as long
as it writes: launch/train.py and `loop.train` (a run directory), the main job
and launch/reproduce.py (their output directory; each run inside has its own),
launch/export.py (the model base `<export_dir>/<model_name>`). A second
process is refused at once with one line naming the holder:

  error: /path/W is in use by another training process (pid 1234 on host h);
  wait for it or use another --workdir

The lock is `fcntl.flock` on an open file, so the kernel releases it when the
holder exits in any way: a SIGKILLed run never leaves a stale lock, and the
file's content (the holder's pid and host, for the message) may be stale
without harm (a clean exit empties it). The file stays, unless it is all the
directory holds (a program that failed before writing anything): then its
creator removes it while still holding it, and `acquire` checks that the file it
locked is still the one at the path (else it locks the new one), so two
processes never hold two files of the same name. A process may take the same directory's lock
again (nested holders: the main job's launcher, then `loop.train`): it is
counted, and released by the outermost holder. Under `multi_worker` only the
chief locks (the other workers write nothing in the run directory).
`launch/evaluate.py` takes no lock: it reads checkpoints and writes only its
own result file, atomically, so it may run beside a training.

flock is advisory and local: on NFS it depends on the server's lock support.
No TensorFlow here, so launchers lock before TensorFlow loads.
"""

import contextlib
import errno
import fcntl
import os
import socket
from typing import Dict, Iterator, Tuple

from rec_vae_tf import errors

LOCK_FILE = '.lock'

# realpath of a locked directory -> (file descriptor, nesting depth, whether this process
# created the lock file): this process's holds.
_HELD: Dict[str, Tuple[int, int, bool]] = {}


class WorkdirInUse(errors.UserError):
  """Another process holds the directory's lock."""


def _holder(fd: int) -> str:
  try:
    text = os.pread(fd, 256, 0).decode('utf-8', 'replace').split()
  except OSError:
    text = []
  if len(text) >= 2 and text[0].isdigit():
    return f'pid {text[0]} on host {text[1]}'
  return 'pid unknown'


def acquire(directory: str, *, flag: str = '--workdir', what: str = 'training') -> None:
  """Takes `directory`'s lock (creating the directory), or raises WorkdirInUse.

  flag and what only word the refusal: `... in use by another <what> process
  (...); wait for it or use another <flag>`.
  """
  key = os.path.realpath(directory)
  if key in _HELD:
    fd, depth, created = _HELD[key]
    _HELD[key] = (fd, depth + 1, created)
    return
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, LOCK_FILE)
  while True:
    created = not os.path.exists(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _holder(fd)
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise errors.UserError(f'cannot lock {directory}: {e.strerror or e}') from None
      raise WorkdirInUse(
          f'{os.path.abspath(directory)} is in use by another {what} process ({holder}); '
          f'wait for it or use another {flag}') from None
    # The file we locked may have been removed by its last holder (`release`) after we
    # opened it: then lock the new one instead.
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  os.ftruncate(fd, 0)
  os.pwrite(fd, f'{os.getpid()} {socket.gethostname()}\n'.encode(), 0)
  _HELD[key] = (fd, 1, created)


def release(directory: str) -> None:
  """Undoes one `acquire` of this process; the outermost one unlocks.

  The lock file is emptied; if this process created it and it is all the
  directory holds (the program failed before writing anything), it is removed,
  so that a refused run leaves the directory as it found it.
  """
  key = os.path.realpath(directory)
  if key not in _HELD:
    return
  fd, depth, created = _HELD[key]
  if depth > 1:
    _HELD[key] = (fd, depth - 1, created)
    return
  del _HELD[key]
  try:
    os.ftruncate(fd, 0)  # no holder: an empty file
    path = os.path.join(directory, LOCK_FILE)
    if created and os.listdir(directory) == [LOCK_FILE]:
      os.remove(path)  # while still locked: a waiting opener sees the inode change
  except OSError:
    pass  # the directory went away or is read-only now: nothing to tidy
  finally:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def hold(directory: str, *, enabled: bool = True, flag: str = '--workdir',
         what: str = 'training') -> Iterator[None]:
  """`acquire` ... `release` around a block (nothing when not `enabled`)."""
  if not enabled:
    yield
    return
  acquire(directory, flag=flag, what=what)
  try:
    yield
  finally:
    release(directory)


def is_held(directory: str) -> bool:
  """Whether this process holds `directory`'s lock."""
  return os.path.realpath(directory) in _HELD
