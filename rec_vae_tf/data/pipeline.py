"""tf.data pipelines: seeded binarization, training and evaluation batches.

The experiments train on *dynamically binarized* MNIST, as most VAE papers
since Burda et al. (2016) do: every time an image is seen, each pixel is drawn
afresh as

  x_d ~ Bernoulli(pixel_d / 255),   d = 1..784,

and log-likelihoods are reported on one fixed binarization of the held-out
images. This module builds tf.data pipelines from the uint8 arrays of
`sources.Splits` whose shuffle order and Bernoulli noise are pure functions of
(seed, epoch, batch index), so a run resumed mid-epoch (`skip_batches`) sees
exactly the batches it would have seen (`make_train_dataset`,
`make_eval_dataset`). The same pipelines serve every dataset of
`catalog.SPECS`: already-binary ones (binarization "fixed": pixel / 255, no
draw) and colour ones ("none": the 0..255 pixel values as float32, for the
discretized logistic).

Shapes: N examples, B batch size, D pixels (784 for MNIST).
"""

import numpy as np
import tensorflow as tf

from rec_vae_tf import errors
from rec_vae_tf.data import catalog
from rec_vae_tf.data import sources

__all__ = [
    "binarize",
    "make_eval_dataset",
    "make_train_dataset",
    "steps_per_epoch",
]

# Tags folded into the user's seed, one per independent stream of randomness.
_TRAIN_STREAM = 1
_SHUFFLE_STREAM = 2
_NOISE_STREAM = 3
_STATIC_STREAM = 4
_EVAL_STREAM = 5


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
  sources.check_count("num_examples", num_examples, 0)
  sources.check_count("batch_size", batch_size, 1)
  return int(num_examples) // int(batch_size)


def _check_binarization(images, binarization):
  """Raises ConfigError for an unknown binarization, or "fixed" on non-binary images."""
  if binarization not in catalog.BINARIZATIONS:
    raise errors.ConfigError(
        f"binarization={binarization!r} is invalid; expected one of "
        f"{', '.join(catalog.BINARIZATIONS)}")
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
  images, num_batches = _check_train_arguments(images, batch_size, seed, epoch,
                                               binarization, skip_batches, slices)
  num_examples = images.shape[0]
  epoch_seed = _seed(seed, _TRAIN_STREAM, epoch)
  order = tf.random.experimental.stateless_shuffle(
      tf.range(num_examples, dtype=tf.int64),
      seed=tf.random.experimental.stateless_fold_in(
          epoch_seed, tf.constant(_SHUFFLE_STREAM, tf.int64)))  # [N]
  batch_indices = tf.reshape(order[:num_batches * batch_size],
                             [num_batches, batch_size])  # [num_batches, B]
  make_batch = _train_batch_fn(images, seed, epoch_seed, binarization,
                               batch_indices)

  dataset = tf.data.Dataset.range(skip_batches, num_batches)  # int64 i.
  dataset = dataset.map(
      make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if slices is not None:
    dataset = _replica_blocks(dataset, batch_size, slices)
  return dataset.prefetch(tf.data.AUTOTUNE)


def _check_train_arguments(images, batch_size, seed, epoch, binarization,
                           skip_batches, slices):
  """`make_train_dataset`'s checks; returns (images as an ndarray, batches per epoch)."""
  images = _check_images(images)
  _check_seed(seed)
  sources.check_count("epoch", epoch, 0)
  sources.check_count("skip_batches", skip_batches, 0)
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
  return images, num_batches


def _train_batch_fn(images, seed, epoch_seed, binarization, batch_indices):
  """i -> training batch i [B, D] of the epoch whose seed is `epoch_seed`."""
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
  return make_batch


def _replica_blocks(dataset, batch_size, slices):
  """Blocks first .. first + count - 1 of each batch, one element per block (`slices`)."""
  first, count, num_slices = slices
  rows = batch_size // num_slices
  dataset = dataset.map(
      lambda batch: tf.reshape(batch[first * rows:(first + count) * rows],
                               [count, rows, batch.shape[-1]]))  # [count, B / num_slices, D]
  return dataset.unbatch()  # [B / num_slices, D] per element


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
  sources.check_count("batch_size", batch_size, 1)
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
