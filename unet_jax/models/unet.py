"""The TF segmentation tutorial's U-Net: a MobileNetV2 encoder and pix2pix upsample blocks.

Variables: the encoder is the subtree "encoder" (Keras layer names inside); the decoder blocks are "up_0".."up_3"
(deepest first), each a "conv" and a "bn"; "last" is the final stride-2 transpose conv to the class logits.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unet_jax import errors
from unet_jax.models import cpu_ops
from unet_jax.models.mobilenet_v2 import TAPS, MobileNetV2, batch_norm

UPSAMPLE_MODES = ("transpose", "nearest")
# The encoder's output stride: each spatial size must divide by it so that every skip lines up with its upsampling.
INPUT_MULTIPLE = 32

_PIX2PIX_KERNEL_INIT = nn.initializers.normal(stddev=0.02)  # pix2pix.upsample's tf.random_normal_initializer(0, 0.02).
_KERAS_KERNEL_INIT = nn.initializers.glorot_uniform()  # Keras' default, for the last Conv2DTranspose.


def upsample_conv(
  x: jax.Array | Sequence[jax.Array],
  features: int,
  *,
  mode: str,
  use_bias: bool,
  kernel_init: Any,
  dtype: Any,
  name: str,
  conv_impl: str = "auto",
  product_dtype: Any = None,
) -> jax.Array:
  """A 3x3 layer that doubles height and width: Keras' Conv2DTranspose(strides=2, padding='same'), or x2 nearest
  upsampling followed by a 3x3 conv.

  The transpose conv (`transpose_kernel=True`) stores the kernel as Keras does, (kh, kw, out, in), and applies it as
  the gradient of a forward conv (spatially flipped, in/out swapped), which is what TF's conv2d_transpose computes;
  with 'SAME' padding lax pads the dilated input (2, 1), giving exactly Keras' output size 2n and alignment.
  `conv_impl` as in `MobileNetV2`: the "cpu" form computes the same layer (same parameters) as matrix products. `x`
  may be the parts (upsampled features, skip) that the layer's input concatenates along channels: the "cpu" form
  then spares the input gradient of a part that needs none (a frozen encoder's skip). `product_dtype`: the operands'
  dtype (see `cpu_ops`).
  """
  cpu = cpu_ops.use_cpu_ops(conv_impl)
  if mode == "transpose":
    return cpu_ops.ConvTranspose3x3Stride2(
      features,
      use_bias=use_bias,
      kernel_init=kernel_init,
      dtype=dtype,
      products=cpu,
      product_dtype=product_dtype,
      name=name,
    )(x)
  if not isinstance(x, jax.Array):
    x = jnp.concatenate(x, axis=-1)
  x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return nn.Conv(
    features,
    (3, 3),
    padding="SAME",
    use_bias=use_bias,
    kernel_init=kernel_init,
    dtype=dtype,
    name=name,
    conv_general_dilated=cpu_ops.conv_function(cpu, product_dtype),
  )(x)


class UpsampleBlock(nn.Module):
  """pix2pix.upsample: upsampling conv (no bias), BatchNorm with Keras' defaults, optional dropout, ReLU."""

  filters: int
  upsample: str = "transpose"
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  conv_impl: str = "auto"
  bn_momentum: float = 0.99  # Keras' BatchNormalization default.
  product_dtype: Any = None

  @nn.compact
  def __call__(
    self, x: jax.Array | Sequence[jax.Array], train: bool = False, real_examples: jax.Array | None = None
  ) -> jax.Array:
    x = upsample_conv(
      x,
      self.filters,
      mode=self.upsample,
      use_bias=False,
      kernel_init=_PIX2PIX_KERNEL_INIT,
      dtype=self.dtype,
      name="conv",
      conv_impl=self.conv_impl,
      product_dtype=self.product_dtype,
    )
    x = batch_norm(x, train=train, real_examples=real_examples, momentum=self.bn_momentum, dtype=self.dtype, name="bn")
    if self.dropout_rate:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.relu(x)


class UNet(nn.Module):
  """`__call__(images [N, H, W, 3] in [-1, 1], train, real_examples)` -> float32 logits [N, H, W, num_classes].

  `real_examples` (bool [N]; None: all) marks the rows of a padded training batch that are data: only they enter
  BatchNorm's batch statistics, so padding changes neither the real rows' outputs nor the running statistics.

  With `freeze_encoder` the encoder's BatchNorm always uses its running statistics, as Keras does for a layer with
  `trainable=False`, so its batch_stats never change (masking its parameters out of the update is the optimizer's job).
  Dropout draws from the "dropout" rng collection. `conv_impl` ("auto" | "xla" | "cpu") and `product_dtype` as in
  `MobileNetV2`.
  """

  num_classes: int = 3
  alpha: float = 1.0
  decoder_filters: Sequence[int] = (512, 256, 128, 64)
  upsample: str = "transpose"
  dropout_rate: float = 0.0
  freeze_encoder: bool = True
  dtype: Any = jnp.float32
  conv_impl: str = "auto"
  # One BatchNorm momentum for encoder and decoder; None keeps Keras' (0.999 encoder, 0.99 decoder).
  bn_momentum: float | None = None
  product_dtype: Any = None

  def _check(self, images: jax.Array) -> None:
    if self.upsample not in UPSAMPLE_MODES:
      raise errors.ConfigError(f"UNet(upsample={self.upsample!r}) is not one of {UPSAMPLE_MODES}.")
    if len(self.decoder_filters) != len(TAPS) - 1:
      raise errors.ConfigError(
        f"UNet(decoder_filters={tuple(self.decoder_filters)}) needs {len(TAPS) - 1} entries, one upsample block per "
        f"encoder skip, e.g. (512, 256, 128, 64)."
      )
    if images.ndim != 4 or images.shape[-1] != 3:
      raise errors.ConfigError(f"UNet expects RGB images shaped [N, H, W, 3]; got shape {images.shape}.")
    height, width = images.shape[1:3]
    if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
      raise errors.ConfigError(
        f"UNet needs height and width that are multiples of {INPUT_MULTIPLE} (the encoder's output stride); got "
        f"{height}x{width}. Resize or crop the images, e.g. to "
        f"{max(INPUT_MULTIPLE, height // INPUT_MULTIPLE * INPUT_MULTIPLE)}x"
        f"{max(INPUT_MULTIPLE, width // INPUT_MULTIPLE * INPUT_MULTIPLE)}."
      )

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False, real_examples: jax.Array | None = None) -> jax.Array:
    self._check(images)
    momentum = {} if self.bn_momentum is None else {"bn_momentum": self.bn_momentum}
    encoder = MobileNetV2(
      self.alpha, self.dtype, self.conv_impl, **momentum, product_dtype=self.product_dtype, name="encoder"
    )
    skips = encoder(images, train=train and not self.freeze_encoder, real_examples=real_examples)
    x = skips[-1]
    for index, (filters, skip) in enumerate(zip(self.decoder_filters, reversed(skips[:-1]))):
      x = UpsampleBlock(
        filters,
        self.upsample,
        self.dropout_rate,
        self.dtype,
        self.conv_impl,
        **momentum,
        product_dtype=self.product_dtype,
        name=f"up_{index}",
      )(x, train, real_examples)
      x = (x, skip)  # Concatenated along channels by the next upsampling conv.
    x = upsample_conv(
      x,
      self.num_classes,
      mode=self.upsample,
      use_bias=True,
      kernel_init=_KERAS_KERNEL_INIT,
      dtype=self.dtype,
      name="last",
      conv_impl=self.conv_impl,
      product_dtype=self.product_dtype,
    )
    return x.astype(jnp.float32)


def check_test_time_scales(scales: Sequence[float]) -> None:
  """A clear error for scales `inference_logits` cannot use; the trainer checks before training, not at its first
  eval, so that a typo costs no training."""
  if not scales or min(scales) <= 0:
    raise errors.ConfigError(
      f"Test-time scales {tuple(scales)} must be positive factors, e.g. (0.75, 1.0, 1.25); "
      f"(1.0,) evaluates the images as they are (config.eval_scales)."
    )


def inference_logits(
  model: nn.Module,
  variables: dict[str, Any],
  images: jax.Array,
  flip_average: bool = False,
  scales: Sequence[float] = (1.0,),
) -> jax.Array:
  """Eval-mode logits, optionally test-time augmented (the mean over flips and scales).

  Args:
    model: the `UNet`.
    variables: its {"params", "batch_stats"}.
    images: float [N, H, W, 3], normalized as in training.
    flip_average: also run the mirror images (in the same batch, twice the size) and average their logits, mirrored
      back, as training flips.
    scales: resize factors (bilinear, each side to the nearest multiple of 32, so any H x W works) whose logits,
      resized back to H x W, are averaged: multi-scale evaluation as segmentation benchmarks report it.

  Returns:
    float32 logits [N, H, W, num_classes].
  """

  def logits_of(x: jax.Array) -> jax.Array:
    if not flip_average:
      return model.apply(variables, x, train=False)
    plain, mirrored = jnp.split(model.apply(variables, jnp.concatenate([x, x[:, :, ::-1]]), train=False), 2)
    return (plain + mirrored[:, :, ::-1]) / 2

  check_test_time_scales(scales)
  batch, height, width, channels = images.shape
  total = 0.0
  for scale in scales:
    size = [max(INPUT_MULTIPLE, round(scale * side / INPUT_MULTIPLE) * INPUT_MULTIPLE) for side in (height, width)]
    if size == [height, width]:
      total = total + logits_of(images)
    else:
      logits = logits_of(jax.image.resize(images, (batch, *size, channels), "linear"))
      total = total + jax.image.resize(logits, (batch, height, width, logits.shape[-1]), "linear")
  return total / len(scales)
