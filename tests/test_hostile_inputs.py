"""Hostile inputs: malformed data, runs, flags and TF_CONFIG get one `error:` line, change nothing.

Every case runs a launcher (launch/train.py, evaluate.py, export.py, main.py or
query.py) and checks the contract of launch/common.py:

  * exit status 2;
  * exactly one stderr line that starts with `error: `, and it is the last line;
    the only other lines allowed are TensorFlow's native start-up lines, which
    its C++ logging prints before Python can silence it; a case that fails
    before TensorFlow loads (`pre_tf`) must print nothing else at all;
  * no traceback;
  * nothing in existing directories changed: every file and directory under
    the test's root (the prepared run, the main job's directory, the data) is
    hashed before and after (a symlink by its target, not followed), so a
    half-written config, checkpoint, history or export directory fails the case.

What is hostile: malformed data files (truncated, bit-flipped, garbage, wrong
shapes, NaN / Inf pixels) of MNIST (npz, IDX, gzip) and of the .mat and .amat
readers of the other datasets; run directories damaged or edited by hand
(config.json or history.json unreadable, or valid JSON of the wrong types;
garbage checkpoints; another run's checkpoints beside this run's config.json);
workdirs that are symlinks to files, dangling, or under a read-only directory
(skipped when the tests run as root, whom permissions do not stop); bad flags
and flag combinations; directories where launch/query.py takes files.

Cases that fail before TensorFlow loads run as real subprocesses (a fraction of
a second each); so do the cases of launch/evaluate.py and export.py that load
it (4-8 s each), whose flags clash with launch/train.py's in this process.
Malformed data and damaged runs given to training are only found after
TensorFlow has loaded, so they run launch/train.py's real `main` in this
process, through the same `common.parse_flags` and `common.run` as
`python -m launch.train` (which defines launch/train.py's flags in the pytest
process: no other test module may import a launcher that defines the same
flags). Cases that need files made first (`PREPARED_CASES`) make them in
<root>/case/, which is removed after each. Unit checks of the readers themselves
(sources.read_idx, sources.load_mnist, the .mat and .amat readers) are in
tests/test_data.py and tests/test_datasets.py.
"""
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

from rec_vae_tf import config as config_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CWD = os.getcwd() if os.path.isfile(os.path.join('launch', 'train.py')) else _ROOT
TIMEOUT = 120

# The flags of the prepared run (launch/train.py), as a dict so cases can override them.
TINY = {'method': 'rme', 'num_components': '2', 'epochs': '1', 'epochs_per_component': '1',
        'batch_size': '16', 'latent_dim': '3', 'num_importance_samples': '5', 'xla': 'false'}
NUM_TRAIN, NUM_HELD_OUT = 64, 20

# TensorFlow's native start-up lines (absl C++ logging before it is initialised).
_TF_CHATTER = re.compile(
    r'^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to '
    r'STDERR|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] .*)$')


# ------------------------------------------------------------------ set-up


def _mnist_arrays(count, rng):
  return (rng.random([count, 784]) < 0.15).astype(np.uint8) * 255


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  """The test's root: data/, a finished run main/rme/, a plain file; all hashed per case."""
  base = tmp_path_factory.mktemp('hostile')
  rng = np.random.default_rng(0)
  data = base / 'data'
  data.mkdir()
  arrays = {}
  for split, count in (('train', NUM_TRAIN), ('valid', NUM_HELD_OUT), ('test', NUM_HELD_OUT)):
    arrays[f'x_{split}'] = _mnist_arrays(count, rng)
    arrays[f'y_{split}'] = np.zeros(count, np.int64)
  np.savez(data / 'mnist.npz', **arrays)
  (base / 'a_file').write_text('not a directory\n')
  run = base / 'main' / 'rme'
  status, _, err = _train_in_process(_flags(dict(TINY, workdir=str(run), data_dir=str(data))))
  assert status == 0, err
  assert (run / 'best').is_dir() and (run / 'history.json').is_file()
  return base


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2',
              MPLCONFIGDIR=str(tmp_path_factory.mktemp('matplotlib')))


def _flags(values, extra=()):
  return [f'--{k}={v}' for k, v in values.items() if v is not None] + list(extra)


def _train_in_process(argv):
  """Runs launch/train.py's main in this process as `python -m launch.train` would.

  Returns (exit status, stdout, stderr).
  """
  import contextlib  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  from launch import common  # pylint: disable=g-import-not-at-top
  from launch import train as train_launcher  # pylint: disable=g-import-not-at-top

  out, err = io.StringIO(), io.StringIO()
  status = 0
  with flagsaver.flagsaver(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    absl_flags.FLAGS.unparse_flags()
    try:
      common.parse_flags(['train'] + list(argv))
      common.run(train_launcher.main)(['train'])
    except SystemExit as e:
      status = e.code
    finally:
      absl_flags.FLAGS.unparse_flags()
  return status, out.getvalue(), err.getvalue()


def _snapshot(base):
  """{relative path: sha256 of a file, 'dir', or 'link -> target'} of everything under base."""
  state = {}
  for dirpath, dirnames, filenames in os.walk(base):
    for name in dirnames + filenames:
      path = os.path.join(dirpath, name)
      if os.path.islink(path):  # not followed: it may dangle, or point outside base
        state[os.path.relpath(path, base)] = f'link -> {os.readlink(path)}'
      elif name in dirnames:
        state[os.path.relpath(path, base)] = 'dir'
      else:
        with open(path, 'rb') as f:
          state[os.path.relpath(path, base)] = hashlib.sha256(f.read()).hexdigest()
  return state


def _copy_run(root, name, config_changes=None):
  """A copy of the prepared run at root/<name> (config.json changed as asked)."""
  copy = root / name
  shutil.copytree(root / 'main' / 'rme', copy)
  if config_changes:
    path = config_lib.config_path(str(copy))
    values = dict(config_lib.Config.load(path).to_dict(), **config_changes)
    config_lib.Config.from_dict(values).save(path)  # the same bytes train() would write
  return copy


# ------------------------------------------------------------ the cases

# Malformed MNIST directories: name -> function(directory) that fills it.


def _idx(array, magic):
  """IDX bytes of a uint8 array with the given 4-byte magic number."""
  header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  return header + array.astype(np.uint8).tobytes()


def _good_idx_pair(directory, train=None, test=None):
  rng = np.random.default_rng(1)
  train = _idx(rng.integers(0, 256, [NUM_TRAIN, 28, 28]), 0x803) if train is None else train
  test = _idx(rng.integers(0, 256, [NUM_HELD_OUT, 28, 28]), 0x803) if test is None else test
  for name, content in (('train-images-idx3-ubyte', train), ('t10k-images-idx3-ubyte', test)):
    if content is not None:
      (directory / name).write_bytes(content)


def _npz(directory, save=np.savez, **arrays):
  rng = np.random.default_rng(2)
  values = {'x_train': _mnist_arrays(NUM_TRAIN, rng), 'x_test': _mnist_arrays(NUM_HELD_OUT, rng)}
  values.update(arrays)
  save(directory / 'mnist.npz', **{k: v for k, v in values.items() if v is not None})


def _flipped_bytes(content, count=4):
  """content with `count` bytes in the middle inverted: a bit-rotted copy of the same length."""
  content = bytearray(content)
  middle = len(content) // 2
  content[middle:middle + count] = bytes(b ^ 0xFF for b in content[middle:middle + count])
  return bytes(content)


def _bit_flipped_npz(save):
  def fill(d):
    _npz(d, save=save)  # the middle of the file is inside x_train, its largest member
    (d / 'mnist.npz').write_bytes(_flipped_bytes((d / 'mnist.npz').read_bytes()))
  return fill


def _damaged_gzip_idx(damage):
  """Good IDX files, the training one gzipped and then damaged: damage(bytes) -> bytes."""
  def fill(d):
    _good_idx_pair(d)
    content = gzip.compress((d / 'train-images-idx3-ubyte').read_bytes())
    os.remove(d / 'train-images-idx3-ubyte')
    (d / 'train-images-idx3-ubyte.gz').write_bytes(damage(content))
  return fill


def _truncated_idx(d):
  good = _idx(np.zeros([NUM_TRAIN, 28, 28]), 0x803)
  _good_idx_pair(d, train=good[:len(good) // 2])


def _float_pixels(value):
  def fill(d):
    x = np.random.default_rng(3).random([NUM_TRAIN, 784]).astype(np.float32)
    x[5, 100] = value
    _npz(d, x_train=x)
  return fill


def _write(name, content):
  def fill(d):
    (d / name).write_bytes(content)
  return fill


def _npy_named_npz(d):
  with open(d / 'mnist.npz', 'wb') as f:
    np.save(f, np.zeros([NUM_TRAIN, 784], np.uint8))


def _directory_named(name):
  def fill(d):
    (d / name).mkdir()
  return fill


def _only_test_idx(d):
  _good_idx_pair(d)
  os.remove(d / 'train-images-idx3-ubyte')


def _train_idx_is_a_directory(d):
  _only_test_idx(d)
  (d / 'train-images-idx3-ubyte').mkdir()


DATA_CASES = {
    # name: (fill the data directory, expected fragment of the message)
    'truncated IDX': (_truncated_idx, 'is truncated'),
    'IDX with a wrong magic number': (
        lambda d: _good_idx_pair(d, train=_idx(np.zeros([NUM_TRAIN, 28, 28]), 0x0D03)),
        'magic number 0x00000d03'),
    'IDX images of 28x27 pixels': (
        lambda d: _good_idx_pair(d, train=_idx(np.zeros([NUM_TRAIN, 28, 27]), 0x803)),
        'expected MNIST images [N, 28, 28]'),
    'IDX labels file given as images': (
        lambda d: _good_idx_pair(d, train=_idx(np.zeros([NUM_TRAIN]), 0x801)),
        'expected MNIST images'),
    'empty IDX file': (lambda d: _good_idx_pair(d, train=b''), 'is empty'),
    'truncated gzip IDX': (_damaged_gzip_idx(lambda content: content[:len(content) // 3]),
                           'truncated or corrupt gzip'),
    'IDX with trailing bytes': (
        lambda d: _good_idx_pair(d, train=_idx(np.zeros([NUM_TRAIN, 28, 28]), 0x803) + b'x'),
        'unexpected byte'),
    'only the test IDX file': (_only_test_idx, 'not train-images-idx3-ubyte'),
    'IDX train file is a directory': (_train_idx_is_a_directory, 'not train-images-idx3-ubyte'),
    'float npz with a NaN pixel': (_float_pixels(np.nan), 'NaN or infinite'),
    'float npz with an infinite pixel': (_float_pixels(np.inf), 'NaN or infinite'),
    'float npz pixels above 1': (_float_pixels(1.5), 'expected [0, 1]'),
    'negative integer pixels': (
        lambda d: _npz(d, x_train=np.full([NUM_TRAIN, 784], -3, np.int16)), '[-3, -3]'),
    'npz images of the wrong shape': (
        lambda d: _npz(d, x_train=np.zeros([NUM_TRAIN, 10], np.uint8)), 'has shape [64, 10]'),
    'npz images of rank 4': (
        lambda d: _npz(d, x_train=np.zeros([NUM_TRAIN, 28, 28, 1], np.uint8)),
        'has shape [64, 28, 28, 1]'),
    'npz without training images': (
        lambda d: _npz(d, x_train=np.zeros([0, 784], np.uint8)), 'holds no images'),
    'npz without x_test': (lambda d: _npz(d, x_test=None), 'lacks x_test'),
    'npz with string pixels': (
        lambda d: _npz(d, x_train=np.full([NUM_TRAIN, 784], 'a')), 'has dtype <U1'),
    'empty mnist.npz': (_write('mnist.npz', b''), 'the file is empty'),
    'text garbage as mnist.npz': (_write('mnist.npz', b'1,2,3\nnot numbers at all\n'),
                                  "it starts with b'1,2,'"),
    'binary garbage as mnist.npz': (_write('mnist.npz', bytes(range(256))), 'not the zip signature'),
    'truncated mnist.npz': (
        lambda d: (_npz(d), (d / 'mnist.npz').write_bytes((d / 'mnist.npz').read_bytes()[:2000])),
        'mnist.npz'),
    'a .npy file named mnist.npz': (_npy_named_npz, 'not the zip signature'),
    'mnist.npz is a directory': (_directory_named('mnist.npz'), 'no MNIST files in'),
    'bit-flipped mnist.npz': (_bit_flipped_npz(np.savez),
                              "mnist.npz: cannot read x_train (Bad CRC-32 for file 'x_train.npy')"),
    'bit-flipped compressed mnist.npz': (_bit_flipped_npz(np.savez_compressed),
                                         'mnist.npz: cannot read x_train ('),
    'bit-flipped gzip IDX': (_damaged_gzip_idx(_flipped_bytes),
                             'train-images-idx3-ubyte.gz is a truncated or corrupt gzip file'),
    'gzip IDX without its trailer': (
        _damaged_gzip_idx(lambda content: content[:-8]),
        'train-images-idx3-ubyte.gz is a truncated or corrupt gzip file'),
}


# The other readers of rec_vae_tf/data/sources.py (MATLAB .mat, .amat text), on files built as
# tests/test_datasets.py builds them: name -> (dataset, fill the data directory, fragment).
_CALTECH_FILE = 'caltech101_silhouettes_28_split1.mat'


def _caltech_mat(d, **options):
  arrays = {key: np.ones([5, 784], np.uint8) for key in ('train_data', 'val_data', 'test_data')}
  scipy.io.savemat(d / _CALTECH_FILE, arrays, **options)


def _damaged(name, write, damage):
  """write(d) writes a good file `name` into d; damage(bytes) -> the bytes left there."""
  def fill(d):
    write(d)
    (d / name).write_bytes(damage((d / name).read_bytes()))
  return fill


def _amat_files(d):
  rng = np.random.default_rng(4)
  for split, count in (('train', 6), ('valid', 3), ('test', 3)):
    rows = rng.random([count, 784]) < 0.2
    (d / f'binarized_mnist_{split}.amat').write_text(
        ''.join(' '.join('1' if v else '0' for v in row) + '\n' for row in rows))


_TEXT_GARBAGE = b'this is not a MATLAB file\n' * 10
OTHER_DATASET_CASES = {
    'caltech101_silhouettes: truncated .mat': (
        'caltech101_silhouettes',
        _damaged(_CALTECH_FILE, _caltech_mat, lambda content: content[:len(content) // 2]),
        f'{_CALTECH_FILE} is not a readable MATLAB v5 .mat file'),
    'caltech101_silhouettes: text garbage as the .mat': (
        'caltech101_silhouettes', _write(_CALTECH_FILE, _TEXT_GARBAGE),
        f'{_CALTECH_FILE} is not a readable MATLAB v5 .mat file (ValueError: Unknown mat file'),
    'caltech101_silhouettes: bit-flipped compressed .mat': (
        'caltech101_silhouettes',
        _damaged(_CALTECH_FILE, lambda d: _caltech_mat(d, do_compression=True), _flipped_bytes),
        f'{_CALTECH_FILE} is not a readable MATLAB v5 .mat file'),
    'omniglot: binary garbage as chardata.mat': (
        'omniglot', _write('chardata.mat', bytes(range(256)) * 4),
        'chardata.mat is not a readable MATLAB v5 .mat file'),
    'binarized_mnist: truncated .amat': (  # cut inside a line
        'binarized_mnist',
        _damaged('binarized_mnist_train.amat', _amat_files, lambda content: content[:-100]),
        'binarized_mnist_train.amat line 6 has 734 values, expected 784'),
    'binarized_mnist: binary garbage as the .amat': (
        'binarized_mnist',
        _damaged('binarized_mnist_valid.amat', _amat_files, lambda _: bytes(range(256))),
        "binarized_mnist_valid.amat line 1 has the character '\\x00'"),
}


def _train_on_malformed_data(root, fill, fragment, dataset='mnist'):
  """launch/train.py's main, in this process, on a copy of the prepared run whose data is bad."""
  data = root / 'bad_data'
  data.mkdir()
  run = None
  try:
    fill(data)
    dataset_flags = {'data_dir': str(data), 'dataset': dataset,
                     'binarization': config_lib.default_binarization(dataset)}
    run = _copy_run(root, 'case_run', dataset_flags)
    before = _snapshot(root)
    status, _, err = _train_in_process(_flags(dict(TINY, workdir=str(run), **dataset_flags)))
    _check(status, err, fragment, before_after=(before, _snapshot(root)), only_line=True)
  finally:
    shutil.rmtree(data, ignore_errors=True)
    if run is not None:
      shutil.rmtree(run, ignore_errors=True)


@pytest.mark.parametrize('name', list(DATA_CASES))
def test_malformed_data_in_process(name, root):
  _train_on_malformed_data(root, *DATA_CASES[name])


@pytest.mark.parametrize('name', list(OTHER_DATASET_CASES))
def test_malformed_files_of_other_datasets_in_process(name, root):
  dataset, fill, fragment = OTHER_DATASET_CASES[name]
  _train_on_malformed_data(root, fill, fragment, dataset)


# Run directories in a bad state, and configs that only a loaded run can refuse.
def _edit_json(name, **fields):
  """Damage: the run's JSON file `name` edited by hand, `fields` set (valid JSON, wrong types)."""
  def damage(run, request):
    del request
    values = json.loads((run / name).read_text())
    values.update(fields)
    (run / name).write_text(json.dumps(values, indent=2))
  return damage


def _checkpoints_of_another_run(run, request):
  """Damage: checkpoints/ and best/ replaced by those of a vae run; config.json stays."""
  other = request.getfixturevalue('other_run')
  for sub in ('checkpoints', 'best'):
    shutil.rmtree(run / sub)
    shutil.copytree(other / sub, run / sub)


@pytest.fixture(scope='module')
def other_run(root, tmp_path_factory):
  """A finished run of another method and size (vae, one component) on the same data."""
  run = tmp_path_factory.mktemp('other') / 'vae'
  flags = dict(TINY, method='vae', num_components='1', workdir=str(run),
               data_dir=str(root / 'data'))
  status, _, err = _train_in_process(_flags(flags))
  assert status == 0, err
  return run


def _apply(damage, run, request):
  """Damages a copy of the run: damage is None, (file, new content) or function(run, request)."""
  if callable(damage):
    damage(run, request)
  elif damage:
    (run / damage[0]).write_bytes(damage[1])


# name: (config changes, damage (`_apply`), fragment)
RUN_CASES = {
    'train_examples beyond the data': (
        {'train_examples': NUM_TRAIN + 1}, None, 'train_examples=65 is invalid'),
    'batch larger than the training set': (
        {'batch_size': NUM_TRAIN * 2}, None, 'batch_size=128 is larger than the 64 training'),
    'garbage history.json': ({}, ('history.json', b'[{"step": 1'), 'unreadable '),
    'history.json of the wrong shape': ({}, ('history.json', b'{"step": 1}'), 'unreadable '),
    'garbage config.json': ({}, ('config.json', b'{"method": '), 'unreadable config'),
    'garbage checkpoint index': (
        {}, ('checkpoints/ckpt-4.index', b'garbage'), 'no readable checkpoint in'),
    # Valid JSON of the wrong types, as a hand edit leaves it.
    'config.json with a number as method': (
        {}, _edit_json('config.json', method=3), 'config.json: invalid config: method=3;'),
    'config.json with latent_dim "three"': (
        {}, _edit_json('config.json', latent_dim='three'),
        "config.json: invalid config: latent_dim='three'; allowed: an integer >= 1"),
    'config.json with "xla": "false"': (
        {}, _edit_json('config.json', xla='false'), "config.json: invalid config: xla='false'"),
    'config.json that is a JSON list': (
        {}, ('config.json', b'["rme", 2]'),
        'config.json: invalid config: a JSON list, expected an object of config fields'),
    'config.json that is not UTF-8': (
        {}, ('config.json', b'{"method": "rm\xe9"}'), "unreadable config"),
    'history.json of strings': (
        {}, ('history.json', b'["epoch 1", "epoch 2"]'),
        'history.json (entry 0 is a JSON string, expected an object)'),
    'history.json with a string step': (
        {}, ('history.json', b'[{"step": "x"}]'),
        'history.json (entry 0 has "step": "x", expected an integer >= 0)'),
    'history.json with string epoch_seconds': (
        {}, ('history.json', b'[{"step": 4, "epoch_seconds": "1.5"}]'),
        'history.json (entry 0 has "epoch_seconds": "1.5", expected a number)'),
    # Another run's checkpoints: the same file names, other shapes.
    'checkpoints of a vae run': (
        {}, _checkpoints_of_another_run,
        '/checkpoints/ckpt-4 does not match the config in '),
}


@pytest.mark.parametrize('name', list(RUN_CASES))
def test_damaged_run_or_config_in_process(name, root, request):
  changes, damage, fragment = RUN_CASES[name]
  run = _copy_run(root, 'case_run', changes)
  try:
    _apply(damage, run, request)
    flags = dict(TINY, workdir=str(run), data_dir=str(root / 'data'),
                 **{k: str(v) for k, v in changes.items()})
    before = _snapshot(root)
    status, _, err = _train_in_process(_flags(flags))
    _check(status, err, fragment, before_after=(before, _snapshot(root)), only_line=True)
  finally:
    shutil.rmtree(run, ignore_errors=True)


# Subprocess cases: (launcher, flags given the root, expected fragment, fails before TF).
def _train_case(**overrides):
  extra = overrides.pop('extra', ())
  return lambda r: _flags(dict(dict(TINY, workdir=str(r / 'main' / 'rme'), data_dir=str(r / 'data')),
                               **overrides), extra)


def _main_case(**overrides):
  extra = overrides.pop('extra', ())
  return lambda r: _flags(dict(dict(TINY, workdir=str(r / 'main'), data_dir=str(r / 'data'),
                                    methods='rme,vae', test_examples='8'), **overrides), extra)


def _run_case(**values):
  extra = values.pop('extra', ())
  return lambda r: _flags(dict({'workdir': str(r / 'main' / 'rme')}, **values), extra)


def _export_case(**values):
  return lambda r: _flags(dict({'workdir': str(r / 'main' / 'rme'),
                                'export_dir': str(r / 'exports')}, **values))


SUBPROCESS_CASES = {
    # train: invalid values and combinations
    'train: vae with 4 components': (
        'train', _train_case(method='vae', num_components=4), 'num_components=4', True),
    'train: negative latent_dim': ('train', _train_case(latent_dim=-3), 'latent_dim=-3', True),
    'train: zero batch_size': ('train', _train_case(batch_size=0), 'batch_size=0', True),
    'train: unknown method': ('train', _train_case(method='gan'), "method='gan'", True),
    'train: kl_weight=1': ('train', _train_case(kl_weight=1), 'kl_weight=1.0', True),
    'train: zero epochs': ('train', _train_case(epochs=0), 'epochs=0', True),
    'train: NaN learning rate': ('train', _train_case(learning_rate='nan'), 'learning_rate=nan',
                                 True),
    'train: mixture with a recursive schedule': (
        'train', _train_case(method='mixture', schedule='recursive'), 'schedule', True),
    'train: prior_floor=1': ('train', _train_case(prior_floor=1), 'prior_floor=1.0', True),
    'train: selection on a log p(x) never measured': (
        'train', _train_case(selection='log_likelihood'), "selection='log_likelihood'", True),
    'train: negative seed': ('train', _train_case(seed=-1), 'seed=-1', True),
    'train: zero num_train_samples': (
        'train', _train_case(num_train_samples=0), 'num_train_samples=0', True),
    'train: negative train_examples': (
        'train', _train_case(train_examples=-5), 'train_examples=-5', True),
    'train: unknown network': ('train', _train_case(network='huge'), "network='huge'", True),
    'train: empty data_dir': ('train', _train_case(data_dir=''), 'data_dir', True),
    'train: non-numeric epochs': ('train', _train_case(epochs='abc'), '--epochs=abc', True),
    'train: non-boolean deterministic': (
        'train', _train_case(deterministic='maybe'), 'deterministic', True),
    'train: unknown flag': ('train', _train_case(extra=['--colour=red']), "'colour'", True),
    'train: positional argument': ('train', _train_case(extra=['oops']), 'positional', True),
    'train: workdir under a file': (
        'train', lambda r: _train_case(workdir=str(r / 'a_file' / 'run'))(r), 'not writable',
        True),
    'train: data_dir is a file': (
        'train', lambda r: _train_case(data_dir=str(r / 'a_file'))(r), 'is a file', True),
    'train: data_dir missing': (
        'train', lambda r: _train_case(data_dir=str(r / 'nowhere'))(r), 'does not exist', True),
    'train: another config in an existing run': (
        'train', _train_case(latent_dim=4), 'different config (fields latent_dim)', False),
    'train: unknown strategy': ('train', _train_case(strategy='gpus'), "strategy='gpus'", True),
    # sizes beyond the machine's memory (rec_vae_tf/training/memory.py), refused before TF loads
    'train: latent_dim beyond memory': (
        'train', _train_case(latent_dim=100000000), 'the config needs about', True),
    'train: evaluation chunk beyond memory': (
        'train', _train_case(eval_batch_size=100000, eval_chunk=100000,
                             num_importance_samples=100000), 'one evaluation chunk', True),
    'main: 64 encoders of 100000 units beyond memory': (
        'main', _main_case(num_components=64, encoder_hidden_units=100000),
        'the config needs about', True),
    # evaluate
    'evaluate: no workdir': ('evaluate', lambda r: [], '--workdir is required', True),
    'evaluate: nonexistent workdir': (
        'evaluate', lambda r: [f'--workdir={r / "nowhere"}'], 'no config at', True),
    'evaluate: workdir is a file': (
        'evaluate', lambda r: [f'--workdir={r / "a_file"}'], 'config', True),
    'evaluate: K=0': ('evaluate', _run_case(num_importance_samples=0),
                      'num_importance_samples=0', True),
    'evaluate: negative K': ('evaluate', _run_case(num_importance_samples=-5),
                             'num_importance_samples=-5', True),
    'evaluate: negative test_examples': (
        'evaluate', _run_case(test_examples=-1), 'test_examples=-1', True),
    'evaluate: data_dir missing': (
        'evaluate', lambda r: _run_case(data_dir=str(r / 'nowhere'))(r), 'does not exist', True),
    'evaluate: non-numeric eval_seed': (
        'evaluate', _run_case(eval_seed='x1'), '--eval_seed=x1', True),
    'evaluate: unknown flag': ('evaluate', _run_case(extra=['--k=5']), "'k'", True),
    'evaluate: missing checkpoint path': (
        'evaluate', lambda r: _run_case(checkpoint=str(r / 'nowhere' / 'ckpt-3'))(r),
        'no checkpoint', False),
    # export
    'export: no export_dir': ('export', _run_case(), '--export_dir are required', True),
    'export: model_name escaping the base': (
        'export', _export_case(model_name='../evil'), 'model_name', True),
    'export: all-digit model_name': ('export', _export_case(model_name='123'), 'model_name',
                                     True),
    'export: K=0': ('export', _export_case(num_importance_samples=0),
                    'num_importance_samples=0', True),
    'export: zero importance_chunk': (
        'export', _export_case(importance_chunk=0), 'importance_chunk=0', True),
    'export: negative export_seed': (
        'export', _export_case(export_seed=-1), 'export_seed=-1', True),
    'export: export_dir is a file': (
        'export', lambda r: _export_case(export_dir=str(r / 'a_file'))(r), 'not a directory',
        True),
    'export: nonexistent workdir': (
        'export', lambda r: _export_case(workdir=str(r / 'nowhere'))(r), 'no config at', True),
    # main
    'main: unknown method in --methods': (
        'main', _main_case(methods='rme,gan'), "methods='rme,gan'", True),
    'main: empty --methods': ('main', _main_case(methods=''), "methods=''", True),
    'main: vae with 4 components': (
        'main', _main_case(method='vae', num_components=4), 'num_components=4', True),
    'main: negative test_examples': (
        'main', _main_case(test_examples=-1), 'test_examples=-1', True),
    'main: negative epochs': ('main', _main_case(epochs=-2), 'epochs=-2', True),
    'main: kl_weight=1': ('main', _main_case(kl_weight=1), 'kl_weight=1.0', True),
    'main: data_dir missing': (
        'main', lambda r: _main_case(data_dir=str(r / 'nowhere'))(r), 'does not exist', True),
    'main: workdir under a file': (
        'main', lambda r: _main_case(workdir=str(r / 'a_file' / 'x'))(r), 'not writable', True),
    'main: unknown flag': ('main', _main_case(extra=['--method_list=rme']), "'method_list'",
                           True),
    'main: multi_worker strategy': (
        'main', _main_case(strategy='multi_worker'), 'run launch/train.py on every worker', True),
    # query
    'query: unknown flag': ('query', lambda r: ['--colour=red'], "'colour'", True),
}


@pytest.mark.parametrize('name', list(SUBPROCESS_CASES))
def test_launcher_refuses_in_one_line(name, root, env):
  launcher, make_flags, fragment, pre_tf = SUBPROCESS_CASES[name]
  before = _snapshot(root)
  result = subprocess.run([sys.executable, '-m', f'launch.{launcher}', *make_flags(root)],
                          cwd=CWD, env=env, capture_output=True, text=True, timeout=TIMEOUT)
  _check(result.returncode, result.stderr, fragment, before_after=(before, _snapshot(root)),
         only_line=pre_tf)


# Subprocess cases that need files made first, in <root>/case/ (removed after the case):
# name -> (launcher, prepare(root, case, request) -> flags, expected fragment, fails before TF).
def _train_on_symlink(target):
  """train with --workdir a symlink at case/link to target(root, case)."""
  def prepare(root, case, request):
    del request
    os.symlink(target(root, case), case / 'link')
    return _train_case(workdir=str(case / 'link'))(root)
  return prepare


def _train_under_read_only_directory(root, case, request):
  del request
  (case / 'read_only').mkdir()
  os.chmod(case / 'read_only', 0o555)
  return _train_case(workdir=str(case / 'read_only' / 'run'))(root)


def _evaluate_on_symlink_to_a_file(root, case, request):
  del request
  os.symlink(root / 'a_file', case / 'link')
  return [f'--workdir={case / "link"}']


def _evaluate_on_data(**arrays):
  """evaluate of the prepared run with --data_dir an mnist.npz whose arrays are these."""
  def prepare(root, case, request):
    del request
    (case / 'data').mkdir()
    _npz(case / 'data', x_valid=_mnist_arrays(NUM_HELD_OUT, np.random.default_rng(5)), **arrays)
    return [f'--workdir={root / "main" / "rme"}', f'--data_dir={case / "data"}']
  return prepare


def _float_test_images(value):
  x = np.random.default_rng(6).random([NUM_HELD_OUT, 784]).astype(np.float32)
  x[3, 7] = value
  return x


def _on_damaged_run(launcher, damage, *extra):
  """launcher on a copy of the prepared run at case/run, damaged as `_apply` does."""
  def prepare(root, case, request):
    run = _copy_run(root, 'case/run')
    _apply(damage, run, request)
    flags = [f'--workdir={run}', *extra]
    return flags + [f'--export_dir={case / "exports"}'] if launcher == 'export' else flags
  return prepare


def _query_files(make, *flags):
  """query with flags naming the path that make(case) returns ({} in a flag)."""
  def prepare(root, case, request):
    del root, request
    path = make(case)
    return [flag.format(path) for flag in flags]
  return prepare


def _empty_directory(case):
  (case / 'empty').mkdir()
  return case / 'empty'


def _garbage_saved_model(case):
  (case / 'export' / '1').mkdir(parents=True)
  (case / 'export' / '1' / 'saved_model.pb').write_bytes(b'not a SavedModel protocol buffer')
  return case / 'export' / '1'


_MISMATCH = 'does not match the config in '
PREPARED_CASES = {
    'train: workdir is a symlink to a file': (
        'train', _train_on_symlink(lambda root, case: root / 'a_file'),
        'is a file (a symlink to', True),
    'train: workdir is a dangling symlink': (
        'train', _train_on_symlink(lambda root, case: case / 'nowhere'), 'which does not exist',
        True),
    'train: workdir under a read-only directory': (
        'train', _train_under_read_only_directory, 'not writable: Permission denied', True),
    'evaluate: workdir is a symlink to a file': (
        'evaluate', _evaluate_on_symlink_to_a_file, 'link is not a directory', True),
    'evaluate: NaN pixel in x_test': (
        'evaluate', _evaluate_on_data(x_test=_float_test_images(np.nan)),
        'x_test contains NaN or infinite pixel values', False),
    'evaluate: infinite pixel in x_test': (
        'evaluate', _evaluate_on_data(x_test=_float_test_images(-np.inf)),
        'x_test contains NaN or infinite pixel values', False),
    'evaluate: x_test of 100 pixels': (
        'evaluate', _evaluate_on_data(x_test=np.zeros([NUM_HELD_OUT, 100], np.uint8)),
        'x_test has shape [20, 100], expected [N, 28, 28] or [N, 784]', False),
    'evaluate: x_test of 28x27 images': (
        'evaluate', _evaluate_on_data(x_test=np.zeros([NUM_HELD_OUT, 28, 27], np.uint8)),
        'x_test has shape [20, 28, 27], expected [N, 28, 28] or [N, 784]', False),
    'evaluate: config.json with a number as method': (
        'evaluate', _on_damaged_run('evaluate', _edit_json('config.json', method=3)),
        'config.json: invalid config: method=3;', True),
    'evaluate: config.json with latent_dim "three"': (
        'evaluate', _on_damaged_run('evaluate', _edit_json('config.json', latent_dim='three')),
        "config.json: invalid config: latent_dim='three'", True),
    'evaluate: config.json that is a JSON list': (
        'evaluate', _on_damaged_run('evaluate', ('config.json', b'[]')),
        'config.json: invalid config: a JSON list', True),
    'evaluate: history.json of strings': (
        'evaluate', _on_damaged_run('evaluate', ('history.json', b'["epoch 1"]')),
        'history.json (entry 0 is a JSON string, expected an object)', False),
    'evaluate: history.json with a string step': (
        'evaluate', _on_damaged_run('evaluate', ('history.json', b'[{"step": "x"}]')),
        'history.json (entry 0 has "step": "x", expected an integer >= 0)', False),
    'evaluate: best/ of a vae run': (
        'evaluate', _on_damaged_run('evaluate', _checkpoints_of_another_run),
        '/best/ckpt-4 ' + _MISMATCH, False),
    'evaluate --checkpoint=latest: checkpoints/ of a vae run': (
        'evaluate', _on_damaged_run('evaluate', _checkpoints_of_another_run,
                                    '--checkpoint=latest'),
        '/checkpoints/ckpt-4 ' + _MISMATCH, False),
    'export: best/ of a vae run': (
        'export', _on_damaged_run('export', _checkpoints_of_another_run),
        '/best/ckpt-4 ' + _MISMATCH, False),
    'export: config.json with latent_dim "three"': (
        'export', _on_damaged_run('export', _edit_json('config.json', latent_dim='three')),
        "config.json: invalid config: latent_dim='three'", True),
    # launch/query.py queries a TF Serving server; it takes no SavedModel directory, so these
    # are directories (an export among them) given where it takes files.
    'query: --images is an empty directory': (
        'query', _query_files(_empty_directory, '--images={}'),
        'empty is a directory, not an image file', True),
    'query: --images is a directory with a garbage saved_model.pb': (
        'query', _query_files(_garbage_saved_model, '--images={}'),
        'is a directory, not an image file (.npy or .png) (it holds a saved_model.pb', True),
    'query: --images is a garbage saved_model.pb': (
        'query', _query_files(lambda case: _garbage_saved_model(case) / 'saved_model.pb',
                              '--images={}'),
        'unsupported image file type .pb', True),
    'query: --latents is a directory': (
        'query', _query_files(_empty_directory, '--signature=decode', '--latents={}'),
        'is a directory, not a .npy file', True),
    'query: --output is a directory': (
        'query', _query_files(lambda case: _empty_directory(case).rename(case / 'out.npz'),
                              '--images=digits.npy', '--output={}'),
        'out.npz is a directory; name an .npz file', True),
}
# Root ignores file permissions: the read-only case cannot fail for root.
_NEEDS_PERMISSIONS = ('train: workdir under a read-only directory',)


@pytest.mark.parametrize('name', [
    pytest.param(name, marks=pytest.mark.skipif(
        name in _NEEDS_PERMISSIONS and os.geteuid() == 0, reason='root ignores permissions'))
    for name in PREPARED_CASES])
def test_launcher_refuses_a_prepared_case_in_one_line(name, root, env, request):
  launcher, prepare, fragment, pre_tf = PREPARED_CASES[name]
  case = root / 'case'
  case.mkdir()
  try:
    flags = prepare(root, case, request)
    before = _snapshot(root)
    result = subprocess.run([sys.executable, '-m', f'launch.{launcher}', *flags],
                            cwd=CWD, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    _check(result.returncode, result.stderr, fragment, before_after=(before, _snapshot(root)),
           only_line=pre_tf)
  finally:
    for dirpath, _, _ in os.walk(case):
      os.chmod(dirpath, 0o755)  # the read-only case's directory
    shutil.rmtree(case)


# --strategy=multi_worker with a missing or malformed TF_CONFIG (TF_CONFIG value, fragment):
# refused before TensorFlow loads (rec_vae_tf/training/cluster.py; more cases in tests/test_distribute.py).
_TWO_WORKERS = {'worker': ['127.0.0.1:2222', '127.0.0.1:2223']}


def _tf_config(cluster, task):
  return json.dumps({'cluster': cluster, 'task': task})


TF_CONFIG_CASES = {
    'unset': (None, 'needs the TF_CONFIG environment variable'),
    'not JSON': ('{"cluster": {"worker": ', 'not valid JSON'),
    'a JSON list': ('[]', 'expected a JSON object'),
    'no cluster': (json.dumps({'task': {'type': 'worker', 'index': 0}}), 'no "cluster"'),
    'a parameter server job': (
        _tf_config(dict(_TWO_WORKERS, ps=['127.0.0.1:2224']), {'type': 'worker', 'index': 0}),
        "job 'ps' is not supported"),
    'an address without a port': (
        _tf_config({'worker': ['127.0.0.1']}, {'type': 'worker', 'index': 0}), 'not a "host:port"'),
    'an address twice': (
        _tf_config({'worker': ['127.0.0.1:2222'] * 2}, {'type': 'worker', 'index': 0}),
        'listed twice'),
    'no task': (json.dumps({'cluster': _TWO_WORKERS}), 'no "task"'),
    'a task type not in the cluster': (
        _tf_config(_TWO_WORKERS, {'type': 'chief', 'index': 0}), "task type 'chief' is not a job"),
    'an index out of range': (
        _tf_config(_TWO_WORKERS, {'type': 'worker', 'index': 2}), 'out of range'),
    'a string index': (
        _tf_config(_TWO_WORKERS, {'type': 'worker', 'index': '0'}), 'must be an integer'),
}


@pytest.mark.parametrize('name', list(TF_CONFIG_CASES))
def test_malformed_tf_config_is_refused_in_one_line(name, root, env):
  text, fragment = TF_CONFIG_CASES[name]
  case_env = {k: v for k, v in env.items() if k != 'TF_CONFIG'}
  if text is not None:
    case_env['TF_CONFIG'] = text
  before = _snapshot(root)
  result = subprocess.run([sys.executable, '-m', 'launch.train',
                           *_train_case(strategy='multi_worker')(root)],
                          cwd=CWD, env=case_env, capture_output=True, text=True, timeout=TIMEOUT)
  _check(result.returncode, result.stderr, fragment, before_after=(before, _snapshot(root)),
         only_line=True)


# Real subprocesses for damage found only after TensorFlow has loaded.
@pytest.mark.parametrize('name', ['truncated IDX', 'float npz with a NaN pixel'])
def test_malformed_data_as_a_subprocess(name, root, env):
  fill, fragment = DATA_CASES[name]
  data = root / 'bad_data'
  data.mkdir()
  run = None
  try:
    fill(data)
    run = _copy_run(root, 'case_run', {'data_dir': str(data)})
    before = _snapshot(root)
    result = subprocess.run(
        [sys.executable, '-m', 'launch.train',
         *_flags(dict(TINY, workdir=str(run), data_dir=str(data)))],
        cwd=CWD, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    _check(result.returncode, result.stderr, fragment, before_after=(before, _snapshot(root)),
           only_line=False)
  finally:
    shutil.rmtree(data, ignore_errors=True)
    if run is not None:
      shutil.rmtree(run, ignore_errors=True)


def test_evaluate_refuses_a_corrupt_selected_checkpoint(root, env):
  run = _copy_run(root, 'case_run')
  try:
    [data_file] = [p for p in (run / 'best').iterdir() if '.data-' in p.name]
    data_file.write_bytes(data_file.read_bytes()[:100])
    before = _snapshot(root)
    result = subprocess.run([sys.executable, '-m', 'launch.evaluate', f'--workdir={run}'],
                            cwd=CWD, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    _check(result.returncode, result.stderr, 'is unreadable (', before_after=(
        before, _snapshot(root)), only_line=False)
  finally:
    shutil.rmtree(run, ignore_errors=True)


def _check(status, stderr, fragment, *, before_after, only_line):
  """The one-line contract (module docstring); only_line: not even TF's start-up lines."""
  assert 'Traceback' not in stderr, stderr[-3000:]
  assert status == 2, (status, stderr[-3000:])
  lines = [l for l in stderr.splitlines() if l.strip()]
  other = [l for l in lines if not _TF_CHATTER.match(l)]
  assert len(other) == 1 and other[0] == lines[-1], stderr[-3000:]
  assert other[0].startswith('error: ') and fragment in other[0], (fragment, other[0])
  if only_line:  # refused before TensorFlow loaded, or in this process
    assert lines == other, stderr[-3000:]
  before, after = before_after
  changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
  assert not changed, changed
