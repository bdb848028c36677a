"""The TF segmentation tutorial's model and input stream in Keras: the reference bench/ measures unet_jax against."""

from collections.abc import Iterable, Iterator
import functools
from typing import Any

import numpy as np
import tensorflow as tf

from unet_jax import data
from unet_jax.data import folder

TAPS = ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu",
        "block_16_project")


def keras_tutorial_unet(keras, image_size: int, num_classes: int = 3, encoder_weights: str | None = None):
  """The tutorial's `unet_model`: MobileNetV2 down stack (its five taps), pix2pix upsample blocks, last transpose
  conv. `encoder_weights`: a Keras MobileNetV2 .h5 loaded into the down stack by layer name (None: random).
  Returns (model, down_stack)."""
  layers = keras.layers
  base = keras.applications.MobileNetV2(input_shape=[image_size, image_size, 3], include_top=False, weights=None)
  down_stack = keras.Model(inputs=base.input, outputs=[base.get_layer(name).output for name in TAPS])
  if encoder_weights:
    down_stack.load_weights(encoder_weights, by_name=True)

  def upsample(filters: int) -> Any:  # pix2pix.upsample(filters, 3), no dropout.
    return keras.Sequential([
        layers.Conv2DTranspose(filters, 3, strides=2, padding="same", use_bias=False,
                               kernel_initializer=keras.initializers.RandomNormal(0.0, 0.02)),
        layers.BatchNormalization(),
        layers.ReLU()])

  inputs = layers.Input(shape=[image_size, image_size, 3])
  skips = down_stack(inputs)
  x = skips[-1]
  for filters, skip in zip((512, 256, 128, 64), reversed(skips[:-1])):
    x = layers.Concatenate()([upsample(filters)(x), skip])
  outputs = layers.Conv2DTranspose(num_classes, 3, strides=2, padding="same")(x)
  return keras.Model(inputs=inputs, outputs=outputs), down_stack


def tutorial_train_batches(keras, config, *, decoder: str = "tf", drop_remainder: bool = False):
  """The TF tutorial's `train_batches` over the config's train files: (image, float mask [B, S, S, 1]) batches,
  forever. `decoder`: "tf" reads the files as tfds does, "pillow" as unet_jax's folder source does.
  `drop_remainder` drops each epoch's partial batch, as unet_jax.data does with data.drop_remainder=True; the
  tutorial keeps it."""
  size = config.data.image_size
  pairs = folder.split_pairs(config.data, config.data.train_split)

  def read(image_path: tf.Tensor, mask_path: tf.Tensor) -> dict[str, tf.Tensor]:  # What tfds' Image feature does.
    decode = functools.partial(tf.io.decode_image, expand_animations=False)
    return {"image": decode(tf.io.read_file(image_path), channels=3),
            "segmentation_mask": decode(tf.io.read_file(mask_path), channels=1)}

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
        lambda ex: {"image": ex["image"], "segmentation_mask": ex["mask"] + 1})
  train_images = datapoints.map(load_image, num_parallel_calls=tf.data.AUTOTUNE)
  return (train_images.cache().shuffle(config.data.shuffle_buffer)
          .batch(config.batch_size, drop_remainder=drop_remainder).repeat()
          .map(Augment()).prefetch(buffer_size=tf.data.AUTOTUNE))


def as_numpy_batches(stream: Iterable[tuple[tf.Tensor, tf.Tensor]]) -> Iterator[dict[str, np.ndarray]]:
  """The tutorial's (image, float mask [B, S, S, 1]) batches in unet_jax's format: numpy, int32 [B, S, S] masks, and
  every row real (weight 1; a partial batch stays short)."""
  for image, mask in stream:
    yield {"image": image.numpy(), "mask": mask.numpy()[..., 0].astype(np.int32),
           "weight": np.ones(len(image), np.float32)}
