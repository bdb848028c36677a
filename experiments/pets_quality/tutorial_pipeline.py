"""The TF segmentation tutorial's input pipeline over a folder config's files, verbatim but for the file reading.

Shared by keras_reference.py (the tutorial's Keras model on it) and tutorial_stream.py (unet_jax's trainer on it).
"""

import functools
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow as tf

from unet_jax import data
from unet_jax.data import folder


def tutorial_train_batches(keras, config, *, decoder: str = "tf", drop_remainder: bool = False):
  """The TF tutorial's `train_batches` over the config's train files: (image, float mask [B, S, S, 1]) batches,
  forever. `decoder`: "tf" reads the files as tfds does, "pillow" as unet_jax's folder source does.
  `drop_remainder` drops each epoch's partial batch, as unet_jax.data does with data.drop_remainder=True; the
  tutorial keeps it."""
  size = config.data.image_size
  pairs = folder.split_pairs(config.data, config.data.train_split)

  def read(image_path: tf.Tensor, mask_path: tf.Tensor) -> dict[str, tf.Tensor]:  # What tfds' Image feature does.
    decode = functools.partial(tf.io.decode_image, expand_animations=False)
    return {
      "image": decode(tf.io.read_file(image_path), channels=3),
      "segmentation_mask": decode(tf.io.read_file(mask_path), channels=1),
    }

  def load_image(datapoint: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:  # The tutorial's, trimaps -1.
    input_image = tf.image.resize(datapoint["image"], (size, size))
    input_mask = tf.image.resize(datapoint["segmentation_mask"], (size, size), method="nearest")
    return data.normalize_image(input_image, config.data.normalization), input_mask - 1

  class Augment(keras.layers.Layer):  # The tutorial's: "both use the same seed, so they'll make the same changes".
    def __init__(self, seed: int = 42):
      super().__init__()
      self.augment_inputs = keras.layers.RandomFlip(mode="horizontal", seed=seed)
      self.augment_labels = keras.layers.RandomFlip(mode="horizontal", seed=seed)

    def call(self, inputs, labels):
      return self.augment_inputs(inputs), self.augment_labels(labels)

  if decoder == "tf":
    files = tf.data.Dataset.from_tensor_slices(([p.image for p in pairs], [p.mask for p in pairs]))
    datapoints = files.map(read)
  else:  # unet_jax's decoding; its masks are class ids already, so put the trimaps' +1 back for `load_image`.
    datapoints = folder.open_shard(config.data, config.data.train_split, 0, 1).examples.map(
      lambda ex: {"image": ex["image"], "segmentation_mask": ex["mask"] + 1}
    )
  train_images = datapoints.map(load_image, num_parallel_calls=tf.data.AUTOTUNE)
  return (
    train_images.cache()
    .shuffle(config.data.shuffle_buffer)
    .batch(config.batch_size, drop_remainder=drop_remainder)
    .repeat()
    .map(Augment())
    .prefetch(buffer_size=tf.data.AUTOTUNE)
  )


def as_numpy_batches(stream: Iterable[tuple[tf.Tensor, tf.Tensor]]) -> Iterator[dict[str, np.ndarray]]:
  """The tutorial's (image, float mask [B, S, S, 1]) batches in unet_jax's format: numpy, int32 [B, S, S] masks, and
  every row real (weight 1; a partial batch stays short)."""
  for image, mask in stream:
    yield {
      "image": image.numpy(),
      "mask": mask.numpy()[..., 0].astype(np.int32),
      "weight": np.ones(len(image), np.float32),
    }
