"""The TF segmentation tutorial's model in Keras: the reference bench/train_step.py measures unet_jax against.

Also the Keras side of experiments/pets_quality/ (with ImageNet weights in its down stack), so both use one model.
"""

from typing import Any

TAPS = ("block_1_expand_relu", "block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu", "block_16_project")


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
    return keras.Sequential(
      [
        layers.Conv2DTranspose(
          filters,
          3,
          strides=2,
          padding="same",
          use_bias=False,
          kernel_initializer=keras.initializers.RandomNormal(0.0, 0.02),
        ),
        layers.BatchNormalization(),
        layers.ReLU(),
      ]
    )

  inputs = layers.Input(shape=[image_size, image_size, 3])
  skips = down_stack(inputs)
  x = skips[-1]
  for filters, skip in zip((512, 256, 128, 64), reversed(skips[:-1])):
    x = layers.Concatenate()([upsample(filters)(x), skip])
  outputs = layers.Conv2DTranspose(num_classes, 3, strides=2, padding="same")(x)
  return keras.Model(inputs=inputs, outputs=outputs), down_stack
