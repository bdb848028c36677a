"""MobileNetV2 feature extractor, layer for layer Keras' `keras.applications.MobileNetV2(include_top=False)`.

Module names are the Keras layer names (`Conv1`, `bn_Conv1`, `block_3_expand`, `block_3_expand_BN`, ...), so
`params["block_3_depthwise"]` holds Keras' `block_3_depthwise` weights and `unet_jax.pretrained` converts a Keras
weight file by name. The network stops at `block_16_project`, the deepest layer the segmentation tutorial uses.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from unet_jax.models import cpu_ops

# The features the TF segmentation tutorial feeds to its decoder, shallow to deep (strides 2, 4, 8, 16, 32).
# `block_16_project` is the projection conv's own output, before `block_16_project_BN`.
TAPS = (
  "block_1_expand_relu",
  "block_3_expand_relu",
  "block_6_expand_relu",
  "block_13_expand_relu",
  "block_16_project",
)
# (expansion, output filters before alpha, stride) of Keras' inverted residual blocks 0..16.
BLOCKS = (
  (1, 16, 1),
  (6, 24, 2),
  (6, 24, 1),
  (6, 32, 2),
  (6, 32, 1),
  (6, 32, 1),
  (6, 64, 2),
  (6, 64, 1),
  (6, 64, 1),
  (6, 64, 1),
  (6, 96, 1),
  (6, 96, 1),
  (6, 96, 1),
  (6, 160, 2),
  (6, 160, 1),
  (6, 160, 1),
  (6, 320, 1),
)
# The width multipliers Keras publishes ImageNet weights for.
KERAS_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)

# Keras' default initialiser for Conv2D and DepthwiseConv2D; it matters only when training from scratch.
_KERAS_KERNEL_INIT = nn.initializers.glorot_uniform()


def batch_norm(
  x: jax.Array, *, train: bool, real_examples: jax.Array | None, momentum: float, dtype: Any, name: str
) -> jax.Array:
  """Keras' BatchNormalization (epsilon 1e-3). In training, `real_examples` (bool [N], None for all) picks the rows
  whose batch statistics count: a padded batch normalises and updates the running statistics as its real rows alone
  would."""
  mask = None if real_examples is None else real_examples[:, None, None, None]
  return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-3, dtype=dtype, name=name)(
    x, mask=mask
  )


def make_divisible(value: float, divisor: int = 8) -> int:
  """Keras' `_make_divisible`: round a channel count to a multiple of 8, never more than 10% down."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * value:
    rounded += divisor
  return rounded


def block_prefix(block_id: int) -> str:
  """Keras names block 0's layers `expanded_conv_*` and block N's `block_N_*`."""
  return f"block_{block_id}_" if block_id else "expanded_conv_"


def correct_pad(size: Sequence[int], kernel_size: int = 3) -> tuple[tuple[int, int], tuple[int, int]]:
  """Keras' `imagenet_utils.correct_pad`: the ZeroPadding2D in front of each stride-2 depthwise conv.

  It pads (0, 1) on even sizes and (1, 1) on odd ones, then convolves 'valid'; for a 3x3 kernel on a known size that is
  TF 'SAME'. Written out to mirror Keras' graph (a Keras model built on an unknown size would pad (0, 1) always).
  """
  half = kernel_size // 2
  return tuple((half - (1 - n % 2), half) for n in size)


class MobileNetV2(nn.Module):
  """The MobileNetV2 encoder; `__call__` maps NHWC images in [-1, 1] to the five `TAPS` features.

  `alpha` is Keras' width multiplier; `dtype` is the compute dtype (parameters stay float32). `conv_impl` picks how
  convolutions compute: "xla" (`lax.conv`), "cpu" (`cpu_ops`: matrix products and fused loops, the fast form on
  XLA:CPU) or "auto" (the "cpu" form on the CPU backend); the parameters are the same for all. `product_dtype`
  (e.g. bfloat16; None: `dtype`) is the convolutions' operand dtype, summed in float32 (see `cpu_ops`).
  """

  alpha: float = 1.0
  dtype: Any = jnp.float32
  conv_impl: str = "auto"
  product_dtype: Any = None
  # Keras' value. Training from scratch for a few hundred steps needs a faster one (e.g. 0.9): with 0.999 the
  # running statistics that inference uses are still mostly their initial values.
  bn_momentum: float = 0.999

  @nn.nowrap  # Builds a submodule, calls nothing: unwrapped, `tabulate` does not record it as a call.
  def _conv(
    self, name: str, features: int, kernel_size: int, strides: int = 1, padding: Any = "SAME", depthwise: bool = False
  ) -> nn.Conv:
    """Every convolution of the network is built here (bias-free, as in Keras).

    A depthwise conv is a grouped conv with kernel (kh, kw, 1, C); Keras stores it as (kh, kw, C, 1). Another way of
    computing a layer (e.g. a CPU fast path) belongs here and must keep these parameter names and shapes.
    """
    return nn.Conv(
      features,
      (kernel_size, kernel_size),
      strides=strides,
      padding=padding,
      feature_group_count=features if depthwise else 1,
      use_bias=False,
      dtype=self.dtype,
      kernel_init=_KERAS_KERNEL_INIT,
      name=name,
      conv_general_dilated=cpu_ops.conv_function(cpu_ops.use_cpu_ops(self.conv_impl), self.product_dtype),
    )

  def _batch_norm(self, name: str, x: jax.Array, train: bool, real_examples: jax.Array | None) -> jax.Array:
    return batch_norm(
      x, train=train, real_examples=real_examples, momentum=self.bn_momentum, dtype=self.dtype, name=name
    )

  def _inverted_res_block(
    self, x: jax.Array, block_id: int, train: bool, real_examples: jax.Array | None, features: dict[str, jax.Array]
  ) -> jax.Array:
    """Keras' `_inverted_res_block`, recording the tapped activations into `features`."""
    expansion, filters, stride = BLOCKS[block_id]
    prefix = block_prefix(block_id)
    inputs = x
    in_channels = x.shape[-1]
    out_channels = make_divisible(int(filters * self.alpha))
    if block_id:
      x = self._conv(prefix + "expand", expansion * in_channels, 1)(x)
      x = nn.relu6(self._batch_norm(prefix + "expand_BN", x, train, real_examples))
      features[prefix + "expand_relu"] = x
    # Keras: ZeroPadding2D(correct_pad) then a 'valid' conv for stride 2; the conv's explicit padding does the same.
    padding = correct_pad(x.shape[1:3]) if stride == 2 else "SAME"
    x = self._conv(prefix + "depthwise", x.shape[-1], 3, strides=stride, padding=padding, depthwise=True)(x)
    x = nn.relu6(self._batch_norm(prefix + "depthwise_BN", x, train, real_examples))
    x = self._conv(prefix + "project", out_channels, 1)(x)
    features[prefix + "project"] = x
    if block_id == len(BLOCKS) - 1:
      return x  # The deepest tap is the projection before its BN; Keras' later layers are not part of the U-Net.
    x = self._batch_norm(prefix + "project_BN", x, train, real_examples)
    if in_channels == out_channels and stride == 1:
      x = inputs + x
    return x

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False, real_examples: jax.Array | None = None
  ) -> tuple[jax.Array, ...]:
    features: dict[str, jax.Array] = {}
    # Keras' first conv is 'same' with stride 2, i.e. TF 'SAME' padding, which lax's 'SAME' reproduces exactly.
    x = self._conv("Conv1", make_divisible(32 * self.alpha), 3, strides=2)(x)
    x = nn.relu6(self._batch_norm("bn_Conv1", x, train, real_examples))
    for block_id in range(len(BLOCKS)):
      x = self._inverted_res_block(x, block_id, train, real_examples, features)
    return tuple(features[name] for name in TAPS)
