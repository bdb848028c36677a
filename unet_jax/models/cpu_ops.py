"""The model's convolutions written as the primitives XLA:CPU runs fast: matrix products and fused elementwise loops.

XLA:CPU lowers `lax.conv_general_dilated` to a generic convolution that is several times slower than a matrix
product for 1x1 convolutions, far slower for depthwise ones, and slowest of all for the gradients of strided and
transposed convolutions (the kernel gradient of the decoder's transpose convs runs for tens of seconds per step).
Here the same arithmetic is regrouped:
- a 1x1 convolution is a `dot_general` over the channel axis;
- a depthwise kxk convolution (stride 1 or 2) is k*k shifted multiply-adds, which XLA fuses into one loop;
- any other kxk convolution is one `dot_general` over the k*k shifted copies of its input (im2col), except on
  fewer than 8 input channels (the RGB input layer), where XLA's own convolution is the faster one;
- the 3x3 stride-2 transpose convolution is one `dot_general` producing all nine kernel taps per input pixel,
  followed by shifted additions that interleave them into the four output phases (a sub-pixel convolution).
Each computes the same sums as the convolution (only the order of additions differs), with the same kernel layout,
so the parameters are interchangeable and the gradients match; `UNet(conv_impl=...)` picks the path, by default
this one on the CPU backend and `lax.conv` elsewhere (on GPU/TPU the convolution libraries are the fast path).

`product_dtype` (None, or bfloat16) casts the operands of every matrix product, forward and backward, and sums in
float32, everything else staying in the compute dtype: on CPUs with avx512_bf16 or AMX, bf16 products run at about
twice the float32 rate while activations, BatchNorm and the depthwise loops keep float32's precision.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from unet_jax import errors

CONV_IMPLS = ("auto", "xla", "cpu")

# Below this many input channels a plain kxk convolution stays `lax.conv` (see `conv_general_dilated`).
_MIN_IM2COL_CHANNELS = 8
_NHWC_HWIO = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def use_cpu_ops(conv_impl: str, platform: str | None = None) -> bool:
  """Whether `conv_impl` ("auto" | "xla" | "cpu") computes with this module; "auto" means when the program runs on
  CPUs. `platform` is the platform of the devices the program is compiled for ("cpu", "gpu", "tpu"); None: JAX's
  default backend. Compiling ahead of time for a TPU from a CPU host is why the two can differ."""
  if conv_impl not in CONV_IMPLS:
    raise errors.ConfigError(
      f"conv_impl={conv_impl!r} is not one of {CONV_IMPLS}: 'auto' picks 'cpu' on the CPU "
      f"backend and 'xla' (lax.conv) on GPU/TPU."
    )
  if conv_impl == "auto":
    return (platform or jax.default_backend()) == "cpu"
  return conv_impl == "cpu"


def resolve_conv_impl(conv_impl: str, platform: str | None = None) -> str:
  """ "auto" made concrete for `platform` (as in `use_cpu_ops`): what a model compiled for those devices computes."""
  return "cpu" if use_cpu_ops(conv_impl, platform) else "xla"


def conv_function(cpu: bool, product_dtype: Any = None) -> Any:
  """What `nn.Conv(conv_general_dilated=...)` computes with: this module's convolutions (`cpu`) or `lax`'s, the
  products' operands in `product_dtype` (None: flax's default, `lax.conv_general_dilated` as it is)."""
  if cpu:
    return functools.partial(conv_general_dilated, product_dtype=product_dtype)
  if product_dtype is None:
    return None
  return functools.partial(_lax_conv_with_products, product_dtype=product_dtype)


def _lax_conv_with_products(lhs: jax.Array, rhs: jax.Array, *args: Any, product_dtype: Any, **kwargs: Any) -> jax.Array:
  out = lax.conv_general_dilated(
    lhs.astype(product_dtype),
    rhs.astype(product_dtype),
    *args,
    preferred_element_type=_sum_dtype(product_dtype, lhs.dtype),
    **kwargs,
  )
  return out.astype(lhs.dtype)


def _is_one(values: int | Sequence[int] | None) -> bool:
  return values is None or all(v == 1 for v in ((values,) if isinstance(values, int) else values))


def _taps(
  x: jax.Array, kernel_size: Sequence[int], strides: Sequence[int], padding: Sequence[tuple[int, int]]
) -> list[jax.Array]:
  """The kh*kw strided windows of NHWC `x` zero-padded by `padding` that kernel tap (u, v) multiplies, row-major.

  One padded copy, sliced: padding each window on its own lets XLA skip the copy, but its bounds checks in the fused
  multiply-add loop cost more than the copy saves (measured on the encoder's depthwise convs).
  """
  if any(lo or hi for lo, hi in padding):
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  out_size = [(size - k) // stride + 1 for size, k, stride in zip(x.shape[1:3], kernel_size, strides)]
  return [
    lax.slice(
      x,
      (0, u, v, 0),
      (x.shape[0], u + strides[0] * (out_size[0] - 1) + 1, v + strides[1] * (out_size[1] - 1) + 1, x.shape[3]),
      (1, *strides, 1),
    )
    for u in range(kernel_size[0])
    for v in range(kernel_size[1])
  ]


def _accumulation_dtype(dtype: Any) -> Any:
  """Sums run in at least float32 (as XLA's convolutions do for bfloat16) and are rounded once at the end."""
  return jnp.promote_types(dtype, jnp.float32)


def _operand(x: jax.Array, product_dtype: Any) -> jax.Array:
  """`x` as a matrix product's operand: in `product_dtype` when one is set."""
  return x if product_dtype is None else x.astype(product_dtype)


def _sum_dtype(product_dtype: Any, dtype: Any) -> Any:
  """The `preferred_element_type` of a product whose result is `dtype`: None (the operands') unless they are cast."""
  return None if product_dtype is None else _accumulation_dtype(dtype)


def _product(x: jax.Array, y: jax.Array, dimensions: Any, product_dtype: Any, out_dtype: Any) -> jax.Array:
  """`lax.dot_general(x, y, dimensions)` in `out_dtype`, its operands in `product_dtype` (None: as they are) summed in
  float32 or wider."""
  out = lax.dot_general(
    _operand(x, product_dtype),
    _operand(y, product_dtype),
    dimensions,
    preferred_element_type=_sum_dtype(product_dtype, out_dtype),
  )
  return out.astype(out_dtype)


def _channel_dot(
  x: jax.Array, kernel: jax.Array, precision: Any, preferred_element_type: Any, product_dtype: Any
) -> jax.Array:
  """[..., Cin] x [Cin, Cout] -> [..., Cout], a matrix product over the flattened leading axes."""
  if precision is None and preferred_element_type is None:
    return _pixel_product(product_dtype, x, kernel)
  return lax.dot_general(
    x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=precision, preferred_element_type=preferred_element_type
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _pixel_product(product_dtype: Any, x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`_channel_dot` with its VJP written out: for autodiff's kernel-gradient product XLA:CPU makes a transposed copy
  of the output gradient (the wider operand of an expansion); contracting the input first needs no copy (the
  trainable step's gain is in bench/README.md)."""
  return _product(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), product_dtype, x.dtype)


def _pixel_product_fwd(product_dtype, x, kernel):
  # The input is kept for the kernel gradient as that product's operand: in bf16, half the memory.
  return _pixel_product(product_dtype, x, kernel), (_operand(x, product_dtype), kernel)


def _pixel_product_bwd(product_dtype, residuals, grad):
  x, kernel = residuals
  pixels = tuple(range(x.ndim - 1))
  grad_x = _product(grad, kernel, (((grad.ndim - 1,), (1,)), ((), ())), product_dtype, grad.dtype)
  grad_kernel = lax.dot_general(
    x,
    _operand(grad, product_dtype),
    ((pixels, pixels), ((), ())),
    preferred_element_type=_accumulation_dtype(kernel.dtype),
  )
  return grad_x, grad_kernel.astype(kernel.dtype)


_pixel_product.defvjp(_pixel_product_fwd, _pixel_product_bwd)


def conv_general_dilated(
  lhs: jax.Array,
  rhs: jax.Array,
  window_strides: Sequence[int],
  padding: Any,
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers: Any = None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision: Any = None,
  preferred_element_type: Any = None,
  *,
  product_dtype: Any = None,
) -> jax.Array:
  """`lax.conv_general_dilated` for `nn.Conv(conv_general_dilated=...)`: NHWC inputs, HWIO kernels.

  Plain and depthwise 2-D convolutions without dilation take the fast forms above. The rest falls back to
  `lax.conv_general_dilated`: other layouts and dilations (never built by this package's models), and a kxk
  convolution of a few channels (the first layer, on RGB), whose im2col copies would be narrow rows that XLA:CPU
  moves slowly: there XLA's convolution is twice as fast as im2col and a product. `product_dtype` applies to all
  but the depthwise loops, which compute in the input's dtype.
  """
  kh, kw, in_per_group, features = rhs.shape if rhs.ndim == 4 else (0,) * 4
  channels = lhs.shape[-1]
  depthwise = feature_group_count == channels == features and in_per_group == 1
  if (
    rhs.ndim != 4
    or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != _NHWC_HWIO
    or not (_is_one(lhs_dilation) and _is_one(rhs_dilation))
    or batch_group_count != 1
    or not (feature_group_count == 1 or depthwise)
    or (not depthwise and kh * kw > 1 and channels < _MIN_IM2COL_CHANNELS)
  ):
    args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count)
    kwargs = {"batch_group_count": batch_group_count, "precision": precision}
    if product_dtype is None:
      return lax.conv_general_dilated(*args, **kwargs, preferred_element_type=preferred_element_type)
    return _lax_conv_with_products(*args, **kwargs, product_dtype=product_dtype)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), window_strides, padding)
  padding = tuple(tuple(pair) for pair in padding)
  if depthwise:
    out = _depthwise_conv(lhs, rhs, tuple(window_strides), padding)
    return out if preferred_element_type is None else out.astype(preferred_element_type)
  taps = _taps(lhs, (kh, kw), window_strides, padding)
  # The HWIO kernel reshaped to (kh*kw*Cin, Cout) matches the taps concatenated in row-major order along channels.
  patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  return _channel_dot(
    patches, rhs.reshape(kh * kw * channels, features), precision, preferred_element_type, product_dtype
  )


def _depthwise_multiply_add(
  x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...]
) -> jax.Array:
  kh, kw, _, channels = kernel.shape
  accumulate = _accumulation_dtype(x.dtype)
  weights = kernel.reshape(kh * kw, channels).astype(accumulate)
  taps = _taps(x, (kh, kw), strides, padding)
  return sum(tap.astype(accumulate) * weights[index] for index, tap in enumerate(taps)).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_conv(
  x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...]
) -> jax.Array:
  """A depthwise convolution (HWIO kernel (kh, kw, 1, C)) as kh*kw shifted multiply-adds, one fused loop.

  Its VJP is written out because autodiff of the multiply-adds keeps all kh*kw shifted copies of the input for the
  kernel gradient (nine times the input's memory per layer); this keeps the input once.
  """
  return _depthwise_multiply_add(x, kernel, strides, padding)


def _depthwise_conv_fwd(x, kernel, strides, padding):
  return _depthwise_multiply_add(x, kernel, strides, padding), (x, kernel)


def _depthwise_conv_bwd(strides, padding, residuals, grad):
  x, kernel = residuals
  accumulate = _accumulation_dtype(x.dtype)
  (top, _), (left, _) = padding
  height, width = x.shape[1:3]
  if (
    strides == (2, 2)
    and kernel.shape[:2] == (3, 3)
    and top + height <= 2 * grad.shape[1]
    and left + width <= 2 * grad.shape[2]
  ):
    # Stride 2: tap (u, v) of output pixel (i, j) read padded input pixel (2i + u, 2j + v), exactly where a 3x3
    # stride-2 transpose conv puts it: one fused loop over the four phases (autodiff's transpose of the strided
    # windows is nine zero-interleaved pads, whose index arithmetic costs several times more).
    taps = grad.astype(accumulate)[:, :, :, None, None, :] * kernel[:, :, 0, :].astype(accumulate)
    grad_x = _phases_to_image(taps)[:, top : top + height, left : left + width].astype(x.dtype)
  else:  # The transpose of the (linear in x) multiply-adds: shifted multiply-adds of `grad` again.
    _, input_vjp = jax.vjp(lambda x: _depthwise_multiply_add(x, kernel, strides, padding), x)
    (grad_x,) = input_vjp(grad)
  # The kernel gradient: tap (u, v) pairs output pixel (i, j) with input pixel (s*i + u - pad, s*j + v - pad), so
  # it is the sum of `x` times `grad` spread (stride - 1 zeros between pixels) and moved to tap (u, v)'s offset.
  # Moving `grad` rather than windowing `x` keeps XLA from computing windows of `x` early (they would depend on
  # nothing but the forward pass) and holding them until the backward pass reaches this layer.
  x, grad = x.astype(accumulate), grad.astype(accumulate)
  taps = []
  for u in range(kernel.shape[0]):
    for v in range(kernel.shape[1]):
      pads = [(0, 0, 0)]
      for size, out, stride, (low, _), offset in zip(x.shape[1:3], grad.shape[1:3], strides, padding, (u, v)):
        start = offset - low
        pads.append((start, size - start - (stride * (out - 1) + 1), stride - 1))
      taps.append(jnp.sum(x * lax.pad(grad, jnp.zeros((), accumulate), pads + [(0, 0, 0)]), axis=(0, 1, 2)))
  return grad_x, jnp.stack(taps).reshape(kernel.shape).astype(kernel.dtype)


_depthwise_conv.defvjp(_depthwise_conv_fwd, _depthwise_conv_bwd)


def _shift(x: jax.Array, offsets: Sequence[int]) -> jax.Array:
  """`x` moved by `offsets` along axes 1, 2, ... (zeros shifted in, the far end dropped): a slice and a pad, which
  XLA fuses into whatever reads the result instead of materialising a padded copy."""
  starts = [0] * x.ndim
  limits = list(x.shape)
  pads = [(0, 0, 0)] * x.ndim
  for axis, offset in enumerate(offsets, start=1):
    limits[axis] -= offset
    pads[axis] = (offset, 0, 0)
  return lax.pad(lax.slice(x, starts, limits), jnp.zeros((), x.dtype), pads)


def _phases_to_image(taps: jax.Array) -> jax.Array:
  """[N, H, W, 3, 3, C] per-pixel tap contributions -> [N, 2H, 2W, C]: pixel (i, j)'s tap (u, v) lands on output
  pixel (2i + u, 2j + v) (those past the edge are dropped). Along each axis, output phase 0 of pixel i sums tap 0 of
  i and tap 2 of i - 1; phase 1 is tap 1 of i. One fused loop reads the taps once and writes the image once."""
  n, h, w, _, _, c = taps.shape

  def tap(u: int, v: int, di: int = 0, dj: int = 0) -> jax.Array:  # Tap (u, v) of pixel (i - di, j - dj).
    return _shift(taps[:, :, :, u, v], (di, dj))

  even_row = [tap(0, 0) + tap(2, 0, di=1) + tap(0, 2, dj=1) + tap(2, 2, di=1, dj=1), tap(0, 1) + tap(2, 1, di=1)]
  odd_row = [tap(1, 0) + tap(1, 2, dj=1), tap(1, 1)]
  image = jnp.stack([jnp.stack(even_row, axis=3), jnp.stack(odd_row, axis=3)], axis=2)  # [N, H, 2, W, 2, C]
  return image.reshape(n, 2 * h, 2 * w, c)


def _image_to_phases(image: jax.Array) -> jax.Array:
  """The transpose of `_phases_to_image`: [N, 2H, 2W, C] -> [N, H, W, 3, 3, C], tap (u, v) of pixel (i, j) reading
  output pixel (2i + u, 2j + v), zero past the edge: the 3x3 stride-2 windows of the image padded at the far end."""
  n, h2, w2, c = image.shape
  windows = _taps(image, (3, 3), (2, 2), ((0, 1), (0, 1)))
  return jnp.stack(windows, axis=3).reshape(n, h2 // 2, w2 // 2, 3, 3, c)


def _part_slices(part_channels: Sequence[int]) -> list[slice]:
  ends = [sum(part_channels[: index + 1]) for index in range(len(part_channels))]
  return [slice(end - channels, end) for end, channels in zip(ends, part_channels)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _conv_transpose(
  part_channels: tuple[int, ...], product_dtype: Any, parts: tuple[jax.Array, ...], kernel: jax.Array
) -> jax.Array:
  return _conv_transpose_fwd(part_channels, product_dtype, parts, kernel)[0]


def _tap_product(x: jax.Array, kernel: jax.Array, product_dtype: Any) -> jax.Array:
  """[N, H, W, Cin] x (3, 3, Cout, Cin) -> [N, H, W, 3, 3, Cout], every tap's contribution per input pixel.

  As a product of matrices, [N*H*W, Cin] by the kernel's own [9*Cout, Cin] (contracting the minor axis of both):
  XLA:CPU hands that to YNNPACK as is, which reads the kernel transposed while packing it. Given 4-D operands, XLA
  would first copy the kernel to [Cin, 9*Cout] in a separate, slow loop on every call (up_1's is 10 MB).
  """
  n, h, w, channels = x.shape
  taps = lax.dot_general(
    _operand(x.reshape(n * h * w, channels), product_dtype),
    _operand(kernel.reshape(-1, channels), product_dtype),
    (((1,), (1,)), ((), ())),
    preferred_element_type=_accumulation_dtype(x.dtype),
  )
  return taps.reshape(n, h, w, 3, 3, kernel.shape[2])


def _conv_transpose_fwd(part_channels, product_dtype, parts, kernel):
  if len(parts) > 1 and 9 * kernel.shape[2] < sum(part_channels):
    # Few outputs (the logits layer): adding per-part products moves less memory than concatenating the inputs.
    taps = sum(
      _tap_product(part, kernel[..., part_slice], product_dtype)
      for part, part_slice in zip(parts, _part_slices(part_channels))
    )
  else:
    taps = _tap_product(parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1), kernel, product_dtype)
  residual_parts = tuple(_operand(part, product_dtype) for part in parts)  # The kernel gradient's operands.
  return _phases_to_image(taps).astype(parts[0].dtype), (residual_parts, kernel)


def _conv_transpose_bwd(part_channels, product_dtype, residuals, grad):
  """Both gradients are matrix products with the tap gradients (a stride-2 3x3 im2col of `grad`), one per input
  part: a part nothing differentiates (a frozen encoder's skip) costs no input-gradient product."""
  parts, kernel = residuals
  accumulate = _accumulation_dtype(grad.dtype)
  grad_taps = _image_to_phases(_operand(grad, product_dtype))  # Cast before the nine windows: half the copying.
  grad_parts, grad_kernel = [], []
  for part, part_slice in zip(parts, _part_slices(part_channels)):
    grad_parts.append(
      lax.dot_general(
        grad_taps,
        _operand(kernel[..., part_slice], product_dtype),
        (((3, 4, 5), (0, 1, 2)), ((), ())),
        preferred_element_type=accumulate,
      ).astype(grad.dtype)
    )
    # XLA:CPU transposes the first operand of a product over pixels: make it the narrower of the two.
    if part.shape[-1] <= 9 * grad.shape[-1]:
      grad_kernel.append(
        lax.dot_general(
          part, grad_taps, (((0, 1, 2), (0, 1, 2)), ((), ())), preferred_element_type=accumulate
        ).transpose(1, 2, 3, 0)
      )
    else:
      grad_kernel.append(
        lax.dot_general(grad_taps, part, (((0, 1, 2), (0, 1, 2)), ((), ())), preferred_element_type=accumulate)
      )
  grad_kernel = jnp.concatenate(grad_kernel, axis=3)
  return tuple(grad_parts), grad_kernel.astype(kernel.dtype)


_conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


def conv_transpose_3x3_stride2(
  x: jax.Array | Sequence[jax.Array], kernel: jax.Array, product_dtype: Any = None
) -> jax.Array:
  """`lax.conv_transpose(x, kernel, (2, 2), "SAME", transpose_kernel=True)` for a (3, 3, out, in) kernel (Keras'
  Conv2DTranspose(3, strides=2, padding="same"), output 2H x 2W), as one matrix product giving every kernel tap's
  contribution per input pixel, then shifted sums that place them (a sub-pixel convolution).

  `x` may be a sequence of arrays that the layer's input is the channel concatenation of (a decoder block's
  upsampled features and its skip); the result is the same, but only the parts that need one get an input gradient.
  """
  parts = tuple(x) if isinstance(x, Sequence) else (x,)
  return _conv_transpose(tuple(part.shape[-1] for part in parts), product_dtype, parts, kernel)


class ConvTranspose3x3Stride2(nn.Module):
  """`nn.ConvTranspose(features, (3, 3), strides=(2, 2), padding="SAME", transpose_kernel=True)`: the same parameters
  ("kernel" (3, 3, features, in), "bias"), the same initial values for the same name, the same outputs.

  `products=True` computes it by `conv_transpose_3x3_stride2` (the CPU formulation); False by the `lax.conv_transpose`
  that flax's layer calls (GPU/TPU), in a form jax2onnx converts to an ONNX ConvTranspose, which it does not for
  flax's layer with transpose_kernel=True. Either takes its operands in `product_dtype` when one is set.
  """

  features: int
  use_bias: bool = True
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()
  dtype: Any = None
  products: bool = True
  product_dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array | Sequence[jax.Array]) -> jax.Array:
    """`x`: the input, or the parts it is the channel concatenation of (see `conv_transpose_3x3_stride2`)."""
    parts = tuple(x) if isinstance(x, Sequence) else (x,)
    kernel = self.param("kernel", self.kernel_init, (3, 3, self.features, sum(p.shape[-1] for p in parts)), jnp.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32) if self.use_bias else None
    *parts, kernel, bias = nn.dtypes.promote_dtype(*parts, kernel, bias, dtype=self.dtype)
    if self.products:
      y = conv_transpose_3x3_stride2(parts, kernel, self.product_dtype)
    else:
      y = lax.conv_transpose(
        _operand(jnp.concatenate(parts, axis=-1), self.product_dtype),
        _operand(kernel, self.product_dtype),
        (2, 2),
        "SAME",
        transpose_kernel=True,
        preferred_element_type=_sum_dtype(self.product_dtype, parts[0].dtype),
      ).astype(parts[0].dtype)
    return y if bias is None else y + bias
