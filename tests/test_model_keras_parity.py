"""The Flax models compute what Keras computes: MobileNetV2 taps, the transpose conv, and the tutorial's whole U-Net.

References are Keras models with random kernels AND random BatchNorm statistics (so a swapped gamma/var or a
mis-oriented kernel cannot hide), converted through the same code users run.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import pretrained
from unet_jax.models import MobileNetV2, UNet
from unet_jax.models.mobilenet_v2 import TAPS
from unet_jax.models.unet import upsample_conv

tf_keras = pytest.importorskip("tf_keras")


def randomize(model, seed: int) -> None:
  """Fresh random values for every weight; BatchNorm stats far from Keras' (mean 0, var 1) init."""
  rng = np.random.default_rng(seed)
  for layer in pretrained._leaf_layers(model):
    weights = layer.get_weights()
    if type(layer).__name__ == "BatchNormalization":
      shape = weights[0].shape
      weights = [
        rng.uniform(0.5, 1.5, shape),
        rng.normal(0, 0.2, shape),
        rng.normal(0, 0.2, shape),
        rng.uniform(0.5, 1.5, shape),
      ]
    else:  # Kernels keep Keras' init scale; zero-initialised biases get some.
      weights = [rng.normal(0, w.std() or 0.1, w.shape) for w in weights]
    layer.set_weights(weights)


def keras_taps_model(base):
  return tf_keras.Model(base.input, [base.get_layer(name).output for name in TAPS])


def assert_close(actual, expected, rtol: float = 1e-4) -> None:
  """Agreement relative to the tensor's scale: max |a - e| <= rtol * max |e|."""
  actual, expected = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
  assert actual.shape == expected.shape
  scale = np.abs(expected).max()
  assert scale > 0 and expected.std() > 0, "a degenerate reference proves nothing"
  np.testing.assert_array_less(np.abs(actual - expected).max(), rtol * scale)


def count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


@functools.partial(jax.jit, static_argnums=0)
def apply_eval(model, variables, images):
  return model.apply(variables, images)


@pytest.mark.parametrize(
  "alpha, height, width",
  [
    (0.35, 96, 96),
    (0.5, 117, 88),  # Non-square with odd sizes along the way (stride-2 padding (1, 1) rather than (0, 1)).
    (0.75, 64, 96),
    (1.0, 128, 128),
    (1.3, 96, 96),
    (1.4, 224, 224),
  ],
)
def test_encoder_taps_match_keras_through_h5(tmp_path, alpha, height, width):
  base = tf_keras.applications.MobileNetV2(input_shape=(height, width, 3), alpha=alpha, include_top=False, weights=None)
  randomize(base, seed=int(alpha * 100) + height)
  path = tmp_path / "mobilenet_v2.h5"
  base.save_weights(path)  # The legacy HDF5 layout of Keras' official files.
  images = np.random.default_rng(0).uniform(-1, 1, (2, height, width, 3)).astype(np.float32)
  expected = keras_taps_model(base)(images, training=False)

  variables = pretrained.mobilenet_v2_variables_from_h5(path)  # alpha inferred from the shapes.
  taps = apply_eval(MobileNetV2(alpha), variables, images)

  assert len(taps) == len(expected) == 5
  for name, actual, reference in zip(TAPS, taps, expected):
    assert actual.dtype == jnp.float32, name
    assert_close(actual, reference)


class TransposeUpsample(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    return upsample_conv(
      x,
      self.features,
      mode="transpose",
      use_bias=True,
      kernel_init=nn.initializers.zeros,
      dtype=jnp.float32,
      name="last",
    )


@pytest.mark.parametrize("height, width", [(4, 6), (5, 3)])
def test_transpose_conv_matches_keras_conv2d_transpose(height, width):
  """Kernel layout (kh, kw, out, in), spatial flip and 'same' padding of the upsampling conv are Keras'."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, height, width, 5)).astype(np.float32)
  layer = tf_keras.layers.Conv2DTranspose(7, 3, strides=2, padding="same")
  layer.build(x.shape)
  kernel, bias = [rng.normal(size=w.shape).astype(np.float32) for w in layer.get_weights()]
  layer.set_weights([kernel, bias])

  actual = TransposeUpsample(7).apply({"params": {"last": {"kernel": kernel, "bias": bias}}}, x)

  assert actual.shape == (2, 2 * height, 2 * width, 7)
  assert_close(actual, layer(x).numpy(), rtol=1e-5)


def keras_tutorial_unet(
  keras,
  alpha: float,
  height: int,
  width: int,
  num_classes: int = 3,
  decoder_filters=(512, 256, 128, 64),
  dropout_blocks=(),
):
  """The TF segmentation tutorial's `unet_model`, with `pix2pix.upsample` written out (same layers, same order).

  `keras` is tf_keras (Keras 2) or Keras 3; returns the model, its down stack and the MobileNetV2 it comes from.
  """
  layers = keras.layers
  base = keras.applications.MobileNetV2(input_shape=[height, width, 3], alpha=alpha, include_top=False, weights=None)
  down_stack = keras.Model(inputs=base.input, outputs=[base.get_layer(name).output for name in TAPS])
  down_stack.trainable = False

  def upsample(filters, size, apply_dropout=False):
    result = keras.Sequential()
    result.add(
      layers.Conv2DTranspose(
        filters,
        size,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_initializer=keras.initializers.RandomNormal(0.0, 0.02),
      )
    )
    result.add(layers.BatchNormalization())
    if apply_dropout:
      result.add(layers.Dropout(0.5))
    result.add(layers.ReLU())
    return result

  up_stack = [upsample(filters, 3, index in dropout_blocks) for index, filters in enumerate(decoder_filters)]
  inputs = layers.Input(shape=[height, width, 3])
  skips = down_stack(inputs)
  x = skips[-1]
  for up, skip in zip(up_stack, reversed(skips[:-1])):
    x = layers.Concatenate()([up(x), skip])
  x = layers.Conv2DTranspose(filters=num_classes, kernel_size=3, strides=2, padding="same")(x)
  return keras.Model(inputs=inputs, outputs=x), down_stack, base


def assert_parameter_counts_match(keras_model, down_stack, variables) -> None:
  """Keras' totals count BN moving statistics too; its trainable count is ours minus what the optimizer masks."""
  keras_trainable = lambda: sum(int(np.prod(w.shape)) for w in keras_model.trainable_weights)
  assert count(variables) == keras_model.count_params()
  assert count(variables["params"]) - count(variables["params"]["encoder"]) == keras_trainable()
  down_stack.trainable = True
  assert count(variables["params"]) == keras_trainable()
  down_stack.trainable = False


def test_unet_matches_keras_tutorial_model():
  keras_model, down_stack, _ = keras_tutorial_unet(tf_keras, 0.35, 64, 96, num_classes=4, dropout_blocks=(0,))
  randomize(keras_model, seed=7)
  images = np.random.default_rng(2).uniform(-1, 1, (2, 64, 96, 3)).astype(np.float32)
  expected = keras_model(images, training=False).numpy()

  variables = pretrained.unet_variables_from_keras(keras_model)
  logits = apply_eval(UNet(num_classes=4, alpha=0.35, dropout_rate=0.5), variables, images)

  assert logits.dtype == jnp.float32
  assert_close(logits, expected)
  assert_parameter_counts_match(keras_model, down_stack, variables)


def test_parameter_counts_equal_keras_tutorial_defaults():
  """The tutorial's configuration: alpha 1.0, 128 px, 3 classes."""
  keras_model, down_stack, _ = keras_tutorial_unet(tf_keras, 1.0, 128, 128)
  variables = jax.eval_shape(UNet().init, jax.random.key(0), jnp.zeros((1, 128, 128, 3)))
  assert_parameter_counts_match(keras_model, down_stack, variables)


def test_keras3_tutorial_model_and_weights_file_convert(tmp_path):
  """Current TensorFlow runs the tutorial on Keras 3: its models convert, and its `.weights.h5` files load."""
  keras = pytest.importorskip("keras")
  if int(keras.__version__.split(".")[0]) < 3:
    pytest.skip("Keras 3 is not installed")
  keras_model, down_stack, base = keras_tutorial_unet(keras, 0.35, 64, 64, num_classes=2)
  randomize(keras_model, seed=11)
  images = np.random.default_rng(3).uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32)

  variables = pretrained.unet_variables_from_keras(keras_model)
  logits = apply_eval(UNet(num_classes=2, alpha=0.35), variables, images)

  assert_close(logits, np.asarray(keras_model(images, training=False)))
  assert_parameter_counts_match(keras_model, down_stack, variables)
  # Keras 3's own weight layout (groups named by class and position, not by layer): same encoder variables.
  base.save_weights(tmp_path / "mobilenet_v2.weights.h5")
  from_file = pretrained.mobilenet_v2_variables_from_h5(tmp_path / "mobilenet_v2.weights.h5", alpha=0.35)
  jax.tree.map(
    np.testing.assert_array_equal, from_file, {collection: tree["encoder"] for collection, tree in variables.items()}
  )
