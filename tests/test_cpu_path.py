"""The CPU fast path (`conv_impl="cpu"`, `unet_jax.models.cpu_ops`) computes what `lax.conv` computes.

Each op is compared with its `lax` counterpart in float32, outputs and both gradients (the ops are linear, so a
random cotangent checks the whole VJP). The whole models are compared on the same variables: outputs in float32;
gradients in float64, because a float32 rounding difference of 1e-7 can move a ReLU6 input across its kink and
change that element's gradient outright, which says nothing about the ops.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from unet_jax import default_config, train_state
from unet_jax.models import MobileNetV2, UNet, cpu_ops
from unet_jax.models.mobilenet_v2 import correct_pad

NHWC = ("NHWC", "HWIO", "NHWC")


def assert_close(actual, expected, rtol: float) -> None:
  """max |a - e| <= rtol * max |e|, for every leaf of the two trees."""

  def check(a, e):
    a, e = np.asarray(a, np.float64), np.asarray(e, np.float64)
    assert a.shape == e.shape
    assert np.abs(a - e).max() <= rtol * np.abs(e).max(), (np.abs(a - e).max(), np.abs(e).max())

  jax.tree.map(check, actual, expected)


def assert_close_to_tree_scale(actual, expected, rtol: float) -> None:
  """Every leaf within rtol of the largest magnitude in the whole tree: for trees with leaves that are zero up to
  rounding (the batch mean after a BatchNorm, the gradient of a BatchNorm bias followed by another BatchNorm)."""
  scale = max(float(np.abs(leaf).max()) for leaf in jax.tree.leaves(expected))
  jax.tree.map(
    lambda a, e: np.testing.assert_array_less(np.abs(np.asarray(a) - np.asarray(e)).max(), rtol * scale),
    actual,
    expected,
  )


def random(shape, seed: int, scale: float = 1.0) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).normal(0, scale, shape), jnp.float32)


def assert_same_vjp(fast, reference, *args) -> None:
  """Equal outputs and equal gradients with respect to every argument."""
  expected, reference_vjp = jax.vjp(reference, *args)
  actual, fast_vjp = jax.vjp(fast, *args)
  assert_close(actual, expected, 1e-5)
  cotangent = random(expected.shape, seed=99)
  assert_close(fast_vjp(cotangent), reference_vjp(cotangent), 1e-5)


def shared_variables(models, images, seed: int = 0):
  """Random variables for all `models` after checking that they declare the same ones (names, shapes, dtypes).
  Random values rather than `init`'s: BatchNorm statistics away from (0, 1), and no threefry compile (slow on CPU)."""
  shapes = [jax.eval_shape(model.init, jax.random.key(0), images) for model in models]
  assert all(tree == shapes[0] for tree in shapes)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    if path[-1].key in ("scale", "var"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    return rng.normal(0, 1 / np.sqrt(leaf.size / leaf.shape[-1]), leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes[0])


def test_the_transpose_conv_initialises_as_flax_does():
  """Same parameter names and values for the same rng, on either formulation: a model initialised on one path is the
  same on the other."""
  x = jnp.zeros((1, 4, 4, 6))
  kwargs = {"use_bias": True, "kernel_init": nn.initializers.normal(0.02), "bias_init": nn.initializers.normal(1.0)}
  reference = nn.ConvTranspose(5, (3, 3), (2, 2), transpose_kernel=True, **kwargs).init(jax.random.key(0), x)
  for products in (True, False):
    variables = cpu_ops.ConvTranspose3x3Stride2(5, products=products, **kwargs).init(jax.random.key(0), x)
    jax.tree.map(np.testing.assert_array_equal, variables, reference)


def test_the_lax_transpose_conv_is_flaxs_exactly():
  """The "xla" formulation (which jax2onnx converts) computes flax's layer bit for bit, with and without bias."""
  x = jax.random.normal(jax.random.key(1), (2, 4, 4, 6))
  kwargs = {"kernel_init": nn.initializers.normal(0.02), "bias_init": nn.initializers.normal(1.0)}
  for use_bias in (True, False):
    layer = cpu_ops.ConvTranspose3x3Stride2(5, use_bias=use_bias, products=False, **kwargs)
    reference = nn.ConvTranspose(5, (3, 3), (2, 2), transpose_kernel=True, use_bias=use_bias, **kwargs)
    variables = layer.init(jax.random.key(0), x)
    np.testing.assert_array_equal(layer.apply(variables, x), reference.apply(variables, x))


def test_conv_impl_resolves_by_backend_and_rejects_unknown_names():
  assert cpu_ops.use_cpu_ops("auto") == (jax.default_backend() == "cpu")
  assert cpu_ops.use_cpu_ops("cpu") and not cpu_ops.use_cpu_ops("xla")
  # "auto" follows the devices a program is compiled for, which an ahead-of-time TPU compile on a CPU host is not.
  assert [cpu_ops.resolve_conv_impl("auto", platform) for platform in ("cpu", "gpu", "tpu")] == ["cpu", "xla", "xla"]
  assert cpu_ops.resolve_conv_impl("cpu", "tpu") == "cpu" and cpu_ops.resolve_conv_impl("xla", "cpu") == "xla"
  model_config = default_config.get_config().model
  assert train_state.create_model(model_config, "tpu").conv_impl == "xla"
  assert train_state.create_model(model_config).conv_impl == cpu_ops.resolve_conv_impl("auto")
  with pytest.raises(ValueError, match="conv_impl='gpu' is not one of"):
    UNet(alpha=0.35, conv_impl="gpu").init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_auto_on_cpu_builds_the_model_from_products_but_its_rgb_layer():
  images = jnp.zeros((1, 32, 32, 3))
  model = UNet(alpha=0.35)
  variables = jax.eval_shape(model.init, jax.random.key(0), images)
  # The printed jaxpr includes the bodies of the custom-VJP calls the products live in.
  program = str(jax.make_jaxpr(model.apply)(variables, images))
  assert "dot_general[" in program and program.count("conv_general_dilated[") == 1  # Conv1, on 3 channels.


@pytest.mark.parametrize(
  "height, width, channels, features, kernel, stride, depthwise, padding",
  [
    (9, 8, 5, 7, 1, 1, False, "SAME"),  # A 1x1 expansion or projection.
    (9, 8, 6, 6, 3, 1, True, "SAME"),  # Depthwise, stride 1.
    (8, 6, 6, 6, 3, 2, True, correct_pad((8, 6))),  # Depthwise, stride 2, Keras' padding on even sizes: (0, 1).
    (9, 7, 6, 6, 3, 2, True, correct_pad((9, 7))),  # ... and on odd sizes: (1, 1).
    (10, 7, 3, 8, 3, 2, False, "SAME"),  # The first conv, on RGB (XLA's own convolution): 3x3 stride 2.
    (10, 7, 8, 5, 3, 2, False, "SAME"),  # The same as im2col and a product, odd and even sizes.
    (6, 6, 4, 5, 3, 1, False, "SAME"),  # The 3x3 conv after nearest upsampling.
  ],
)
def test_conv_matches_lax(height, width, channels, features, kernel, stride, depthwise, padding):
  groups = channels if depthwise else 1
  images = random((2, height, width, channels), seed=0)
  weights = random((kernel, kernel, channels // groups, features), seed=1)
  numbers = lax.conv_dimension_numbers(images.shape, weights.shape, NHWC)
  conv = lambda impl: (
    lambda x, w: impl(x, w, (stride, stride), padding, dimension_numbers=numbers, feature_group_count=groups)
  )
  assert_same_vjp(conv(cpu_ops.conv_general_dilated), conv(lax.conv_general_dilated), images, weights)


@pytest.mark.parametrize(
  "height, width, part_channels, features",
  [
    (4, 4, (6,), 5),  # One input, even size.
    (3, 5, (4, 6), 5),  # Upsampled features and a skip (concatenated for the product), odd sizes.
    (4, 2, (4, 6), 1),  # Few outputs, as the logits layer: one product per part.
  ],
)
def test_transpose_conv_matches_lax(height, width, part_channels, features):
  parts = tuple(random((2, height, width, c), seed=index) for index, c in enumerate(part_channels))
  kernel = random((3, 3, features, sum(part_channels)), seed=7)

  def reference(parts, kernel):
    return lax.conv_transpose(
      jnp.concatenate(parts, axis=-1), kernel, (2, 2), "SAME", dimension_numbers=NHWC, transpose_kernel=True
    )

  assert cpu_ops.conv_transpose_3x3_stride2(parts, kernel).shape == (2, 2 * height, 2 * width, features)
  assert_same_vjp(cpu_ops.conv_transpose_3x3_stride2, reference, parts, kernel)


def test_encoder_paths_declare_the_same_variables_and_agree():
  """Odd and even sizes along the way (38x22 -> 19x11 -> 10x6 -> 5x3 -> 3x2 -> 2x1), so both of Keras' stride-2
  paddings occur. Train mode (batch statistics) in float64: over a few pixels they amplify float32 rounding."""
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 38, 22, 3)), jnp.float32)
  encoder = lambda impl, dtype=jnp.float32: MobileNetV2(0.35, dtype, conv_impl=impl)
  variables = shared_variables([encoder("cpu"), encoder("xla")], images)
  apply = jax.jit(lambda model, variables, x: model.apply(variables, x), static_argnums=0)
  assert_close(apply(encoder("cpu"), variables, images), apply(encoder("xla"), variables, images), 1e-5)

  train = jax.jit(
    lambda model, variables, x: model.apply(variables, x, train=True, mutable=["batch_stats"]), static_argnums=0
  )
  with jax.enable_x64(True):
    variables64, images64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), (variables, images))
    (taps, updates), (expected_taps, expected_updates) = [
      train(encoder(impl, jnp.float64), variables64, images64) for impl in ("cpu", "xla")
    ]
  assert_close(taps, expected_taps, 1e-10)
  assert_close_to_tree_scale(updates, expected_updates, 1e-10)


IMAGES = np.random.default_rng(1).uniform(-1, 1, (2, 32, 64, 3)).astype(np.float32)


def unet(impl: str, upsample: str = "transpose", dtype=jnp.float32) -> UNet:
  return UNet(alpha=0.35, upsample=upsample, freeze_encoder=False, dtype=dtype, conv_impl=impl)


@pytest.mark.parametrize("upsample", ["transpose", "nearest"])
def test_unet_paths_declare_the_same_variables_and_give_the_same_logits(upsample):
  variables = shared_variables([unet("cpu", upsample), unet("xla", upsample)], IMAGES)
  apply = jax.jit(lambda model, variables, x: model.apply(variables, x), static_argnums=0)
  assert_close(apply(unet("cpu", upsample), variables, IMAGES), apply(unet("xla", upsample), variables, IMAGES), 1e-5)


def test_unet_paths_give_the_same_gradients():
  """A train step's loss, BatchNorm updates and gradients, with the encoder trainable so that every layer has one.
  (The nearest mode's 3x3 convs are `test_conv_matches_lax`'s last case.)"""
  labels = jnp.asarray(np.random.default_rng(2).integers(0, 3, IMAGES.shape[:3]))

  @functools.partial(jax.jit, static_argnums=0)
  def loss_and_grads(model, variables, images):
    def loss(params):
      logits, updates = model.apply({**variables, "params": params}, images, train=True, mutable=["batch_stats"])
      log_probs = jax.nn.log_softmax(logits)
      return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1).mean(), updates

    return jax.value_and_grad(loss, has_aux=True)(variables["params"])

  with jax.enable_x64(True):
    variables, images = jax.tree.map(
      lambda x: jnp.asarray(x, jnp.float64), (shared_variables([unet("cpu")], IMAGES), IMAGES)
    )
    (cpu_aux, cpu_grads), (xla_aux, xla_grads) = [
      loss_and_grads(unet(impl, dtype=jnp.float64), variables, images) for impl in ("cpu", "xla")
    ]
  assert cpu_grads["up_0"]["conv"]["kernel"].dtype == jnp.float64
  assert_close(cpu_aux[0], xla_aux[0], 1e-10)  # The loss.
  assert_close_to_tree_scale(cpu_aux[1], xla_aux[1], 1e-10)  # The updated BatchNorm statistics.
  assert_close_to_tree_scale(cpu_grads, xla_grads, 1e-10)


def bf16_exact(x: jax.Array) -> jax.Array:
  """`x` rounded to bfloat16 and back: values whose bf16 products, summed in float32, are float32's own."""
  return x.astype(jnp.bfloat16).astype(jnp.float32)


PRODUCT_CONVS = {
  "1x1": ((2, 9, 8, 5), (1, 1, 5, 7), 1),
  "3x3 im2col": ((2, 10, 7, 8), (3, 3, 8, 5), 2),
  "3x3 rgb": ((2, 10, 7, 3), (3, 3, 3, 8), 2),  # `lax.conv` on both paths.
}


def product_conv(conv_general_dilated, stride: int):
  return lambda x, w: conv_general_dilated(x, w, (stride, stride), "SAME", dimension_numbers=NHWC)


@pytest.mark.parametrize("cpu", [True, False], ids=["cpu", "xla"])
@pytest.mark.parametrize("name", list(PRODUCT_CONVS))
def test_bf16_products_sum_exactly_in_float32(name, cpu):
  """On bf16-representable inputs, kernels and cotangents, products in bf16 summed in float32 are float32's; on
  others they round each operand (so the option is in effect): a few of bf16's 2^-8 relative steps. `lax.conv`'s
  own VJP returns the gradients in its operands' dtype, so where it computes they are float32's rounded to bf16."""
  image_shape, kernel_shape, stride = PRODUCT_CONVS[name]
  images, weights = random(image_shape, seed=0), random(kernel_shape, seed=1)
  bf16 = product_conv(cpu_ops.conv_function(cpu, jnp.bfloat16), stride)
  reference = product_conv(lax.conv_general_dilated, stride)
  expected, reference_vjp = jax.vjp(reference, bf16_exact(images), bf16_exact(weights))
  actual, bf16_vjp = jax.vjp(bf16, bf16_exact(images), bf16_exact(weights))
  assert actual.dtype == jnp.float32
  assert_close(actual, expected, 1e-5)
  cotangent = bf16_exact(random(expected.shape, seed=99))
  own_vjp = cpu and name != "3x3 rgb"
  assert_close(bf16_vjp(cotangent), reference_vjp(cotangent), 1e-5 if own_vjp else 2**-8)

  rounded, exact = bf16(images, weights), reference(images, weights)
  assert 1e-5 * np.abs(exact).max() < np.abs(rounded - exact).max() < 2**-6 * np.abs(exact).max()


@pytest.mark.parametrize("products", [True, False], ids=["cpu", "xla"])
def test_bf16_transpose_conv_products_sum_exactly_in_float32(products):
  parts = tuple(bf16_exact(random((2, 3, 5, c), seed=index)) for index, c in enumerate((4, 6)))
  kernel = bf16_exact(random((3, 3, 5, 10), seed=7))
  layer = lambda dtype: cpu_ops.ConvTranspose3x3Stride2(5, use_bias=False, products=products, product_dtype=dtype)
  apply = lambda dtype: lambda parts, kernel: layer(dtype).apply({"params": {"kernel": kernel}}, parts)
  expected, reference_vjp = jax.vjp(apply(None), parts, kernel)
  actual, bf16_vjp = jax.vjp(apply(jnp.bfloat16), parts, kernel)
  assert actual.dtype == jnp.float32
  assert_close(actual, expected, 1e-5)
  cotangent = bf16_exact(random(expected.shape, seed=99))
  assert_close(bf16_vjp(cotangent), reference_vjp(cotangent), 1e-5 if products else 2**-8)


def test_product_dtype_from_the_config():
  model_config = default_config.get_config().model
  assert train_state.create_model(model_config).product_dtype is None
  model_config.product_dtype = "float32"  # The compute dtype: nothing to cast.
  assert train_state.create_model(model_config).product_dtype is None
  model_config.product_dtype = "bfloat16"
  model = train_state.create_model(model_config)
  assert model.product_dtype == jnp.bfloat16 and model.dtype == jnp.float32
  model_config.product_dtype = "float16"
  with pytest.raises(ValueError, match="product_dtype='float16' is not supported"):
    train_state.create_model(model_config)


def test_unet_paths_agree_with_bf16_products():
  """Every product of either formulation in bf16 (on the "xla" path the depthwise convs too): logits within a few
  bf16 rounding steps of the float32 model's."""
  model = lambda impl, dtype: UNet(alpha=0.35, conv_impl=impl, product_dtype=dtype)
  variables = shared_variables([model("cpu", jnp.bfloat16), model("xla", None)], IMAGES)
  apply = jax.jit(lambda model, variables, x: model.apply(variables, x), static_argnums=0)
  cpu, xla = apply(model("cpu", jnp.bfloat16), variables, IMAGES), apply(model("xla", jnp.bfloat16), variables, IMAGES)
  exact = apply(model("xla", None), variables, IMAGES)
  assert_close(cpu, exact, 2e-2)
  assert_close(xla, exact, 2e-2)
  program = str(jax.make_jaxpr(model("cpu", jnp.bfloat16).apply)(variables, IMAGES))
  assert "bf16" in program and "preferred_element_type=float32" in program
