"""Tests for rec_vae_tf.data.sources and .catalog: the other datasets, offline.

Every fixture is written at test time into tmp_path in the dataset's real
published format (.amat text, gzipped IDX, MATLAB v5 .mat via scipy.io.savemat)
or mocked with tfds.testing.mock_data, so nothing is downloaded. Images carry
their index in binary in their first row (upright), so split order and
orientation mix-ups fail loudly.
"""

import gzip
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import tensorflow as tf
import tensorflow_datasets as tfds

from rec_vae_tf import errors
from rec_vae_tf.data import catalog
from rec_vae_tf.data import sources

SIDE = 28
D = SIDE * SIDE
_ID_BITS = 12


def _id_images(ids, fill=0.5):
  """Upright [N, 28, 28] float images in [0, 1]; row 0 spells the id in bits.

  The rest is `fill`, except an asymmetric "F" (value 1) in the lower left,
  so a transposed or flipped image cannot pass for an upright one.
  """
  ids = np.asarray(ids)
  images = np.full((len(ids), SIDE, SIDE), fill)
  images[:, 0, :_ID_BITS] = (ids[:, None] >> np.arange(_ID_BITS)) & 1
  images[:, 10:26, 4] = 1  # The F's stem,
  images[:, 10, 4:14] = 1  # its top bar,
  images[:, 17, 4:10] = 1  # and its shorter middle bar.
  return images


def _ids(rows):
  """Recovers the ids of [N, 784] uint8 rows of _id_images (0/255 bits)."""
  bits = (np.asarray(rows).reshape(-1, SIDE, SIDE)[:, 0, :_ID_BITS] > 127)
  return (bits.astype(np.int64) << np.arange(_ID_BITS)).sum(axis=1)


def _assert_upright(rows, ids, fill=0.5):
  expected = np.rint(_id_images(ids, fill) * 255).astype(np.uint8)
  np.testing.assert_array_equal(rows.reshape(-1, SIDE, SIDE), expected)


def _assert_one_line_error(excinfo, *needles):
  message = str(excinfo.value)
  assert "\n" not in message, message
  for needle in needles:
    assert needle in message, (needle, message)


def _check_splits(splits, sizes, num_pixels):
  for images, size in zip((splits.train, splits.valid, splits.test), sizes):
    assert images.dtype == np.uint8
    assert images.shape == (size, num_pixels)
    assert images.flags.c_contiguous


# --------------------------------------------------------------- registry


def test_specs_and_registry_agree():
  assert set(catalog.SPECS) == set(sources.LOADERS)
  for name, spec in catalog.SPECS.items():
    assert spec.name == name
    assert spec.num_pixels == int(np.prod(spec.image_shape))
    binary = spec.likelihood == "bernoulli"
    assert ("none" in spec.binarizations) == (not binary), name
    assert "/my/dir" in spec.how_to_prepare("/my/dir"), name
    for field in (spec.validation, spec.preprocessing, spec.source,
                  spec.licence, spec.prepare):
      assert "\n" not in field and field, name
  assert catalog.SPECS["binarized_mnist"].binarizations == ("fixed",)
  assert catalog.SPECS["celeba"].image_shape == (64, 64, 3)
  assert catalog.SPECS["omniglot"].split_sizes == (23000, 1345, 8070)


def test_unknown_dataset_and_bad_arguments(tmp_path):
  with pytest.raises(errors.ConfigError) as excinfo:
    sources.load_dataset("cifar10", tmp_path)
  _assert_one_line_error(excinfo, "cifar10", "omniglot")
  with pytest.raises(errors.ConfigError, match="train_examples=0"):
    sources.load_dataset("omniglot", tmp_path, train_examples=0)
  with pytest.raises(errors.ConfigError, match="validation_examples"):
    sources.load_dataset("binarized_mnist", tmp_path, validation_examples=5)


def test_import_is_cheap():
  """Importing the module does not import tensorflow_datasets.

  (scipy is not checked: tensorflow itself imports it when it is installed.)
  """
  code = ("import sys, rec_vae_tf.data.sources; "
          "print([m for m in sys.modules if m.startswith('tensorflow_datasets')])")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
  assert result.stdout.strip() == "[]"


# -------------------------------------------------------- binarized_mnist


def _write_amat(path, images):
  """One image per line, 784 space-separated 0/1, like Larochelle's files."""
  with open(path, "w") as f:
    for row in images.reshape(len(images), D).astype(int):
      f.write(" ".join(map(str, row)) + "\n")


def _binary_id_images(ids):
  return _id_images(ids, fill=0).astype(np.uint8)  # 0/1, upright.


def _write_binarized_mnist(directory, sizes=(6, 4, 3)):
  first = 0
  for split, size in zip(("train", "valid", "test"), sizes):
    _write_amat(directory / f"binarized_mnist_{split}.amat",
                _binary_id_images(range(first, first + size)))
    first += size


def test_binarized_mnist(tmp_path):
  _write_binarized_mnist(tmp_path)
  splits = sources.load_dataset("binarized_mnist", tmp_path)
  _check_splits(splits, (6, 4, 3), D)
  for images in (splits.train, splits.valid, splits.test):
    assert set(np.unique(images)) <= {0, 255}
  np.testing.assert_array_equal(_ids(splits.train), range(6))
  np.testing.assert_array_equal(_ids(splits.valid), range(6, 10))
  _assert_upright(splits.test, range(10, 13), fill=0)
  short = sources.load_dataset("binarized_mnist", tmp_path, train_examples=2)
  np.testing.assert_array_equal(short.train, splits.train[:2])
  with pytest.raises(errors.ConfigError, match="only 6 training"):
    sources.load_dataset("binarized_mnist", tmp_path, train_examples=7)


def test_binarized_mnist_missing_file(tmp_path):
  _write_binarized_mnist(tmp_path)
  os.remove(tmp_path / "binarized_mnist_valid.amat")
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_dataset("binarized_mnist", tmp_path)
  _assert_one_line_error(excinfo, "binarized_mnist_valid.amat",
                         f"--data_dir={tmp_path}", "larocheh")


@pytest.mark.parametrize("corrupt, needle", [
    (lambda text: text[:len(text) // 2], "values, expected 784"),  # Truncated.
    (lambda text: text.replace("1", "2", 1), "'2'"),
    (lambda text: text.replace("0 1", "0.5 1", 1), "'.'"),
    (lambda text: text.replace("1 0", "10", 1), "multi-digit"),
    (lambda text: "", "empty"),
])
def test_binarized_mnist_malformed(tmp_path, corrupt, needle):
  _write_binarized_mnist(tmp_path)
  path = tmp_path / "binarized_mnist_test.amat"
  path.write_text(corrupt(path.read_text()))
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_dataset("binarized_mnist", tmp_path)
  _assert_one_line_error(excinfo, str(path), needle)


# --------------------------------------------------------------- omniglot

_OMNI_TRAIN = 1345 + 5  # Just more than IWAE's validation split.
_OMNI_TEST = 3


def _matlab_columns(images):
  """[N, 28, 28] upright images -> [784, N], each column in MATLAB order."""
  return np.stack([image.ravel(order="F") for image in images], axis=1)


def _write_omniglot(directory, **overrides):
  arrays = {
      "data": _matlab_columns(_id_images(range(_OMNI_TRAIN))),
      "testdata": _matlab_columns(
          _id_images(range(_OMNI_TRAIN, _OMNI_TRAIN + _OMNI_TEST))),
  }
  arrays.update(overrides)
  arrays = {k: v for k, v in arrays.items() if v is not None}
  scipy.io.savemat(directory / "chardata.mat", arrays)
  return directory / "chardata.mat"


def test_omniglot_iwae_split_and_orientation(tmp_path):
  _write_omniglot(tmp_path)
  splits = sources.load_dataset("omniglot", tmp_path)
  _check_splits(splits, (5, 1345, _OMNI_TEST), D)
  order = np.random.RandomState(123).permutation(_OMNI_TRAIN)
  np.testing.assert_array_equal(_ids(splits.train), order[:5])
  np.testing.assert_array_equal(_ids(splits.valid), order[5:])
  # Upright (the F is not transposed), grey 0.5 -> 128, 1 -> 255.
  _assert_upright(splits.test, range(_OMNI_TRAIN, _OMNI_TRAIN + _OMNI_TEST))
  _assert_upright(splits.train, order[:5])
  assert set(np.unique(splits.train)) == {0, 128, 255}

  other = sources.load_dataset("omniglot", tmp_path, validation_examples=1000)
  np.testing.assert_array_equal(_ids(other.valid), order[-1000:])
  with pytest.raises(errors.ConfigError, match="at least one must remain"):
    sources.load_dataset("omniglot", tmp_path,
                         validation_examples=_OMNI_TRAIN)


def test_omniglot_missing_file(tmp_path):
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_dataset("omniglot", tmp_path / "nowhere")
  _assert_one_line_error(excinfo, "chardata.mat", "does not exist",
                         "github.com/yburda/iwae",
                         f"--data_dir={tmp_path / 'nowhere'}")


@pytest.mark.parametrize("overrides, needle", [
    ({"testdata": None}, "lacks the variable(s) testdata"),
    ({"data": np.zeros((3, D))}, "[3, 784], expected [784, N]"),  # Transposed.
    ({"data": np.full((D, 4), 1.5)}, "outside [0, 1]"),
    ({"data": np.full((D, 4), np.nan)}, "outside [0, 1]"),
])
def test_omniglot_malformed(tmp_path, overrides, needle):
  path = _write_omniglot(tmp_path, **overrides)
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_dataset("omniglot", tmp_path)
  _assert_one_line_error(excinfo, str(path), needle, "chardata.mat")


@pytest.mark.parametrize("keep", [0, 10, 100, 0.5])
def test_omniglot_truncated_or_foreign_file(tmp_path, keep):
  path = _write_omniglot(tmp_path)
  raw = path.read_bytes()
  path.write_bytes(raw[:int(len(raw) * keep) if keep < 1 else keep])
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_dataset("omniglot", tmp_path)
  _assert_one_line_error(excinfo, str(path), "not a readable MATLAB v5")


# ---------------------------------------------------------- fashion_mnist


def _write_idx_gz(path, images):
  header = struct.pack(">IIII", 0x00000803, *images.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + images.astype(np.uint8).tobytes())


def _write_fashion_mnist(directory, train=14, test=3):
  pixels = (np.arange((train + test) * D) * 7 % 256).astype(np.uint8)
  images = pixels.reshape(train + test, SIDE, SIDE)
  _write_idx_gz(directory / "train-images-idx3-ubyte.gz", images[:train])
  _write_idx_gz(directory / "t10k-images-idx3-ubyte.gz", images[train:])
  return images.reshape(train + test, D)


def test_fashion_mnist(tmp_path):
  images = _write_fashion_mnist(tmp_path)
  splits = sources.load_dataset("fashion_mnist", tmp_path,
                                validation_examples=4)
  _check_splits(splits, (10, 4, 3), D)
  np.testing.assert_array_equal(splits.train, images[:10])
  np.testing.assert_array_equal(splits.valid, images[10:14])
  np.testing.assert_array_equal(splits.test, images[14:])
  # The default carves 10000 validation images: too many for the fixture.
  with pytest.raises(errors.ConfigError, match="validation_examples=10000"):
    sources.load_dataset("fashion_mnist", tmp_path)


def test_fashion_mnist_missing_and_malformed(tmp_path):
  _write_fashion_mnist(tmp_path)
  test_path = tmp_path / "t10k-images-idx3-ubyte.gz"
  raw = test_path.read_bytes()
  os.remove(test_path)
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_dataset("fashion_mnist", tmp_path, validation_examples=4)
  _assert_one_line_error(excinfo, "t10k-images-idx3-ubyte.gz",
                         "fashion-mnist", f"--data_dir={tmp_path}")

  test_path.write_bytes(raw[:len(raw) // 2])  # A truncated gzip stream.
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_dataset("fashion_mnist", tmp_path, validation_examples=4)
  _assert_one_line_error(excinfo, str(test_path), "fashion-mnist")
  assert "run.sh" not in str(excinfo.value)  # Not MNIST's remedy.

  _write_idx_gz(test_path, np.zeros((2, SIDE, SIDE - 1), np.uint8))
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_dataset("fashion_mnist", tmp_path, validation_examples=4)
  _assert_one_line_error(excinfo, "[2, 28, 27]", "fashion-mnist")


# ------------------------------------------------- caltech101_silhouettes


def _caltech_rows(ids):
  """Upright silhouettes (object 1) -> file rows: MATLAB order, object 0."""
  silhouettes = _binary_id_images(ids)
  return np.stack([(1 - s).ravel(order="F") for s in silhouettes]).astype(
      np.uint8)


def _write_caltech(directory, **overrides):
  arrays = {
      "train_data": _caltech_rows(range(0, 5)),
      "val_data": _caltech_rows(range(5, 8)),
      "test_data": _caltech_rows(range(8, 12)),
      "train_labels": np.ones((5, 1)),
  }
  arrays.update(overrides)
  path = directory / "caltech101_silhouettes_28_split1.mat"
  scipy.io.savemat(path, arrays)
  return path


def test_caltech101_silhouettes(tmp_path):
  _write_caltech(tmp_path)
  splits = sources.load_dataset("caltech101_silhouettes", tmp_path)
  _check_splits(splits, (5, 3, 4), D)
  for images in (splits.train, splits.valid, splits.test):
    assert set(np.unique(images)) == {0, 255}
  # Upright, object 255 on background 0.
  _assert_upright(splits.train, range(0, 5), fill=0)
  _assert_upright(splits.valid, range(5, 8), fill=0)
  _assert_upright(splits.test, range(8, 12), fill=0)


@pytest.mark.parametrize("overrides, needle", [
    ({"val_data": np.full((3, D), 0.5)}, "values other than 0 and 1"),
    ({"test_data": np.zeros((4, D - 1))}, "[4, 783], expected [N, 784]"),
    ({"train_data": "not a matrix"}, "not a 2-D numeric matrix"),
])
def test_caltech101_silhouettes_malformed(tmp_path, overrides, needle):
  path = _write_caltech(tmp_path, **overrides)
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_dataset("caltech101_silhouettes", tmp_path)
  _assert_one_line_error(excinfo, str(path), needle, "marlin")


def test_caltech101_silhouettes_missing(tmp_path):
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_dataset("caltech101_silhouettes", tmp_path)
  _assert_one_line_error(excinfo, "caltech101_silhouettes_28_split1.mat",
                         "not found", "people.cs.umass.edu/~marlin",
                         f"--data_dir={tmp_path}")


# -------------------------------------------------------- svhn and celeba


def test_svhn_with_mock_tfds(tmp_path):
  with tfds.testing.mock_data(num_examples=12):
    splits = sources.load_dataset("svhn", tmp_path, validation_examples=4)
    raw = np.stack([example["image"] for example in tfds.as_numpy(
        tfds.load("svhn_cropped:3.1.0", split="train", data_dir=tmp_path,
                  download=False, shuffle_files=False))])  # [12, 32, 32, 3]
  _check_splits(splits, (8, 4, 12), 32 * 32 * 3)
  # Channels last, in tfds order, validation from the end of train.
  np.testing.assert_array_equal(splits.train, raw[:8].reshape(8, -1))
  np.testing.assert_array_equal(splits.valid, raw[8:].reshape(4, -1))


def _celeba_as_dataset(self, split, **kwargs):
  """Stands in for tfds's reader: distinct, known images per split.

  Inside the central 140x140 crop (rows 39..178, cols 19..158), the left half
  is (split value, 10, 20) and the right half (split value, 200, 30); outside
  it everything is 255, which must not leak into the result.
  """
  del self, kwargs
  value = {"train": 1, "validation": 2, "test": 3}[str(split)]
  count = {"train": 5, "validation": 3, "test": 4}[str(split)]
  image = np.full((218, 178, 3), 255, np.uint8)
  image[39:179, 19:89] = (value, 10, 20)
  image[39:179, 89:159] = (value, 200, 30)
  return tf.data.Dataset.from_tensor_slices(
      {"image": np.repeat(image[None], count, axis=0)})


def test_celeba_crop_resize_and_partition(tmp_path):
  with tfds.testing.mock_data(as_dataset_fn=_celeba_as_dataset):
    splits = sources.load_dataset("celeba", tmp_path)
  _check_splits(splits, (5, 3, 4), 64 * 64 * 3)
  for value, images in enumerate((splits.train, splits.valid, splits.test), 1):
    images = images.reshape(-1, 64, 64, 3)
    np.testing.assert_array_equal(images[..., 0], value)  # Channel 0, all.
    # Columns far from the seam keep the exact colours; no border leaks in.
    np.testing.assert_array_equal(images[:, :, :28, 1:], np.broadcast_to(
        np.array([10, 20], np.uint8), images[:, :, :28, 1:].shape))
    np.testing.assert_array_equal(images[:, :, 36:, 1:], np.broadcast_to(
        np.array([200, 30], np.uint8), images[:, :, 36:, 1:].shape))


@pytest.mark.parametrize("name, tfds_name", [
    ("svhn", "svhn_cropped:3.1.0"), ("celeba", "celeb_a:2.1.0")])
def test_tfds_datasets_not_prepared(tmp_path, name, tfds_name):
  with pytest.raises(errors.DataError) as excinfo:
    sources.load_dataset(name, tmp_path)
  _assert_one_line_error(excinfo, tfds_name, f"tfds build {tfds_name}",
                         f"--data_dir={tmp_path}")


def test_celeba_wrong_image_shape(tmp_path):
  def wrong_shape(self, split, **kwargs):
    del self, split, kwargs
    return tf.data.Dataset.from_tensor_slices(
        {"image": np.zeros((2, 64, 64, 3), np.uint8)})

  with tfds.testing.mock_data(as_dataset_fn=wrong_shape):
    with pytest.raises(errors.DataError) as excinfo:
      sources.load_dataset("celeba", tmp_path)
  _assert_one_line_error(excinfo, "celeb_a:2.1.0", "malformed")


# ------------------------------------------------------------------ mnist


def test_mnist_through_the_registry(tmp_path):
  images = _write_fashion_mnist(tmp_path, train=12, test=5)  # Same format.
  splits = sources.load_dataset("mnist", tmp_path, train_examples=3,
                                validation_examples=2)
  _check_splits(splits, (3, 2, 5), D)
  np.testing.assert_array_equal(splits.train, images[:3])
  np.testing.assert_array_equal(splits.valid, images[10:12])
