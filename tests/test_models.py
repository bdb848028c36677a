"""UNet and MobileNetV2 behaviour that needs no Keras: shapes, input checks, frozen BN, dropout, bf16."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax.models import MobileNetV2, UNet
from unet_jax.models.unet import inference_logits

SIZE = 64  # Small but a multiple of 32; alpha 0.35 keeps compiles short.


def images(size: int = SIZE, batch: int = 2, seed: int = 0) -> jax.Array:
  return jax.random.uniform(jax.random.key(seed), (batch, size, size, 3), minval=-1.0, maxval=1.0)


def random_variables(model, x, seed: int = 0):
  """Random variables of the shapes `model.init` gives, without compiling `init`: its threefry RNG alone takes
  10-20 s to compile on a small CPU. Kernels get 1/sqrt(fan-in) scale, BN statistics stay plausible."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ("scale", "var"):
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    std = 1 / np.sqrt(leaf.size / leaf.shape[-1]) if name == "kernel" else 0.1
    return rng.normal(0, std, leaf.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, jax.eval_shape(model.init, jax.random.key(0), x))


@functools.partial(jax.jit, static_argnums=0)
def evaluate(model, variables, x):
  return model.apply(variables, x)


@functools.partial(jax.jit, static_argnums=0)
def train_forward(model, variables, x, dropout_key):
  """A training-mode forward pass, returning logits and the updated batch_stats."""
  return model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": dropout_key})


@pytest.fixture(scope="module")
def small_unet_variables():
  return random_variables(UNet(alpha=0.35), images())


def test_encoder_taps_have_the_tutorial_shapes():
  """The tutorial's 128 px input gives skips of 64, 32, 16, 8 and 4 px, with Keras' channel counts for alpha 1."""
  model = MobileNetV2()
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 128, 128, 3)))
  taps = jax.eval_shape(model.apply, variables, jnp.zeros((1, 128, 128, 3)))
  assert [t.shape for t in taps] == [
    (1, 64, 64, 96),
    (1, 32, 32, 144),
    (1, 16, 16, 192),
    (1, 8, 8, 576),
    (1, 4, 4, 320),
  ]
  assert "block_16_project_BN" not in variables["params"]  # Not part of the tutorial's down stack.


def test_unet_variables_group_the_encoder_and_logits_cover_the_image(small_unet_variables):
  params, batch_stats = small_unet_variables["params"], small_unet_variables["batch_stats"]
  assert set(params) == {"encoder", "up_0", "up_1", "up_2", "up_3", "last"}
  assert set(batch_stats) == {"encoder", "up_0", "up_1", "up_2", "up_3"}
  assert "block_13_expand_BN" in batch_stats["encoder"]
  assert params["last"]["kernel"].shape == (3, 3, 3, 64 + 48)  # Conv2DTranspose layout (kh, kw, out, in).
  logits = evaluate(UNet(alpha=0.35), small_unet_variables, images())
  assert logits.shape == (2, SIZE, SIZE, 3) and logits.dtype == jnp.float32


def test_flip_averaged_logits_are_mirror_equivariant(small_unet_variables):
  model, x = UNet(alpha=0.35), images()
  logits = jax.jit(inference_logits, static_argnums=(0, 3))
  plain = logits(model, small_unet_variables, x, False)
  mirrored = logits(model, small_unet_variables, x[:, :, ::-1], False)
  averaged = logits(model, small_unet_variables, x, True)
  np.testing.assert_allclose(averaged, (plain + mirrored[:, :, ::-1]) / 2, atol=1e-5)
  # Mirroring the input mirrors the averaged logits, which the plain ones (random weights) do not do.
  np.testing.assert_allclose(logits(model, small_unet_variables, x[:, :, ::-1], True), averaged[:, :, ::-1], atol=1e-5)
  assert not np.allclose(mirrored, plain[:, :, ::-1], atol=1e-3)


def test_multi_scale_logits_average_each_scale_resized_back(small_unet_variables):
  model, x = UNet(alpha=0.35), images()
  logits = jax.jit(inference_logits, static_argnums=(0, 3, 4))
  plain = logits(model, small_unet_variables, x, True, (1.0,))
  np.testing.assert_allclose(logits(model, small_unet_variables, x, True, (1.0, 1.0)), plain, atol=1e-6)
  # 0.5 and 0.4 both round to 32 px (a multiple of 32); 1.5 gives 96 px. Each is resized back to 64 px.
  by_scale = {}
  for side in (32, 96):
    resized = jax.image.resize(x, (2, side, side, 3), "linear")
    by_scale[side] = jax.image.resize(logits(model, small_unet_variables, resized, True, (1.0,)), plain.shape, "linear")
  got = logits(model, small_unet_variables, x, True, (0.5, 1.0, 1.5))
  assert got.shape == plain.shape
  np.testing.assert_allclose(got, (by_scale[32] + plain + by_scale[96]) / 3, atol=1e-5)
  np.testing.assert_allclose(logits(model, small_unet_variables, x, True, (0.4,)), by_scale[32], atol=1e-5)
  assert not np.allclose(by_scale[32], plain, atol=1e-2)
  with pytest.raises(ValueError, match=r"scales \(0.0, 1.0\) must be positive"):
    inference_logits(model, small_unet_variables, x, scales=(0.0, 1.0))


def test_nearest_upsampling_shapes():
  model = UNet(num_classes=5, alpha=0.35, decoder_filters=(64, 32, 16, 8), upsample="nearest")
  x = jnp.zeros((1, 96, 64, 3))
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert jax.eval_shape(model.apply, variables, x).shape == (1, 96, 64, 5)
  # A forward 3x3 conv after x2 nearest upsampling: kernel (kh, kw, in, out).
  assert variables["params"]["up_0"]["conv"]["kernel"].shape == (3, 3, 112, 64)
  assert variables["params"]["last"]["kernel"].shape == (3, 3, 8 + 48, 5)


@pytest.mark.parametrize("height, width", [(100, 100), (128, 100), (16, 32)])
def test_sizes_not_multiple_of_32_are_rejected_clearly(height, width):
  with pytest.raises(ValueError, match=rf"multiples of 32.*got {height}x{width}"):
    UNet(alpha=0.35).init(jax.random.key(0), jnp.zeros((1, height, width, 3)))


@pytest.mark.parametrize(
  "kwargs, message",
  [
    ({"upsample": "bilinear"}, "upsample='bilinear'"),
    ({"decoder_filters": (64, 32)}, r"decoder_filters=\(64, 32\)\) needs 4 entries"),
  ],
)
def test_bad_configuration_is_rejected_clearly(kwargs, message):
  with pytest.raises(ValueError, match=message):
    UNet(alpha=0.35, **kwargs).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


@pytest.mark.parametrize("freeze_encoder", [True, False])
def test_frozen_encoder_keeps_its_batch_norm_statistics(small_unet_variables, freeze_encoder):
  model = UNet(alpha=0.35, dropout_rate=0.5, freeze_encoder=freeze_encoder)  # Shares compiles with the dropout test.
  _, updates = train_forward(model, small_unet_variables, images(), jax.random.key(1))
  encoder_changed = jax.tree.map(
    lambda new, old: bool(jnp.any(new != old)),
    updates["batch_stats"]["encoder"],
    small_unet_variables["batch_stats"]["encoder"],
  )
  decoder_changed = jnp.any(
    updates["batch_stats"]["up_0"]["bn"]["mean"] != small_unet_variables["batch_stats"]["up_0"]["bn"]["mean"]
  )
  assert bool(decoder_changed)
  if freeze_encoder:
    assert not any(jax.tree.leaves(encoder_changed))
  else:
    assert all(jax.tree.leaves(encoder_changed))


def test_dropout_draws_from_the_dropout_rng_only_in_training(small_unet_variables):
  model = UNet(alpha=0.35, dropout_rate=0.5, freeze_encoder=True)
  first, _ = train_forward(model, small_unet_variables, images(), jax.random.key(1))
  second, _ = train_forward(model, small_unet_variables, images(), jax.random.key(2))
  assert not np.allclose(first, second)
  evaluation = evaluate(model, small_unet_variables, images())  # No rng needed outside training.
  np.testing.assert_allclose(evaluation, evaluate(UNet(alpha=0.35), small_unet_variables, images()))


def test_bfloat16_computes_in_bf16_with_float32_parameters_and_logits(small_unet_variables):
  model = UNet(alpha=0.35, dtype=jnp.bfloat16)
  variables = jax.eval_shape(model.init, jax.random.key(0), images())
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  taps = jax.eval_shape(
    MobileNetV2(0.35, jnp.bfloat16).apply, {k: v["encoder"] for k, v in variables.items()}, images()
  )
  assert {t.dtype for t in taps} == {jnp.dtype(jnp.bfloat16)}

  logits = evaluate(model, small_unet_variables, images())
  reference = evaluate(UNet(alpha=0.35), small_unet_variables, images())
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  # Same weights, same answer up to bf16 rounding.
  assert np.corrcoef(np.ravel(logits), np.ravel(reference))[0, 1] > 0.99
