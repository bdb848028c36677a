"""An ONNX model of a trained run's predictor, written with `jax2onnx` and checked with `onnxruntime`.

`to_onnx(predictor)` -> `onnx.ModelProto` with one input and two outputs, the batch dimension dynamic ("B"):
- "images": float32 (or uint8) [B, S, S, 3], RGB in 0..255, already resized to the model's input size S (the
  predictor resizes bilinearly, as `tf.image.resize` does: half-pixel centres, no antialiasing when enlarging);
- "logits": float32 [B, S, S, num_classes], what `predict.model_logits` computes (normalisation and model; the
  run's test-time flips and scales are not exported);
- "masks": int32 [B, S, S], their argmax. The predictor's own masks resize the logits to the image's size first.

`check_with_onnxruntime(model, images)` runs a model (proto, bytes or path) back in onnxruntime; `export` compares its
outputs with the JAX model's as it does every format's.

jax2onnx and onnxruntime are optional: `pip install -e ".[export]"`.
"""

import functools
import importlib
import importlib.metadata
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unet_jax import errors, predict

INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "masks")
BATCH = "B"  # The symbolic batch dimension's name in the ONNX graph.
# Float32 logits of the two runtimes differ by the order of their additions only: ~1e-7 on the tiny test model.
LOGITS_ATOL = 1e-4
INPUT_DTYPES = (np.float32, np.uint8)


class MissingDependencyError(errors.UserError, ImportError):
  """An optional package a command needs is not installed."""


def _require(module: str) -> Any:
  try:
    return importlib.import_module(module)
  except ImportError as error:
    raise MissingDependencyError(
      f"ONNX export needs the package {module!r} ({error}): install the export extra, "
      f'`pip install -e ".[export]"` (or `pip install jax2onnx onnxruntime`).'
    ) from error


def _export_logits_and_masks(predictor: predict.Predictor, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  # The "xla" formulation (`lax.conv`): jax2onnx maps its convolutions to ONNX Conv / ConvTranspose nodes, which
  # onnxruntime runs with its own kernels. The "cpu" one that "auto" picks on the CPU backend (`cpu_ops`) is the
  # same arithmetic regrouped as matrix products and shifted slices for XLA:CPU, which would gain nothing in
  # onnxruntime, and its transpose conv needs a static batch. Same parameters, same logits.
  model = predictor.model.clone(conv_impl="xla")
  logits = predict.model_logits(
    model, predictor.normalization, predictor.flip_average, predictor.scales, predictor.variables, images
  )
  return logits, jnp.argmax(logits, axis=-1).astype(jnp.int32)


def to_onnx(predictor: predict.Predictor, input_dtype: Any = np.float32, opset: int = 23) -> Any:
  """The predictor's model-sized computation as an ONNX model with a dynamic batch.

  Args:
    predictor: a `Predictor` with keep_size=False: the model has one input size, `predictor.image_size`.
    input_dtype: np.float32 (images in 0..255, as the predictor feeds the model) or np.uint8.
    opset: the ONNX opset to target.

  Returns:
    An `onnx.ModelProto` ("images" -> "logits", "masks"; see the module docstring). `onnx.save` writes it.

  Raises:
    errors.ConfigError: for test-time flips or scales, or a model jax2onnx cannot convert.
  """
  if predictor.keep_size:
    raise errors.ConfigError(
      "The ONNX model takes images at the model's training size; export a Predictor with keep_size=False."
    )
  jax2onnx = _require("jax2onnx")
  # Test-time augmentation: jax2onnx needs a static size to convert the flips' jnp.split of the batch, and the
  # scales' jax.image.resize, so neither converts with a dynamic batch.
  if predictor.flip_average or any(scale != 1.0 for scale in predictor.scales):
    raise errors.ConfigError(
      f"Test-time augmentation (flip_average={predictor.flip_average}, scales={predictor.scales}) does not convert "
      f"with jax2onnx {importlib.metadata.version('jax2onnx')} and a dynamic batch. Export "
      f"`dataclasses.replace(predictor, flip_average=False, scales=(1.0,))`: its masks lack what the averaging adds."
    )
  input_dtype = np.dtype(input_dtype)
  if input_dtype not in INPUT_DTYPES:
    raise errors.ConfigError(f"input_dtype={input_dtype} is not one of {[np.dtype(d).name for d in INPUT_DTYPES]}.")
  compute = functools.partial(_export_logits_and_masks, predictor)

  def logits_and_masks(images: jax.Array) -> tuple[jax.Array, jax.Array]:
    return compute(images.astype(jnp.float32))

  size = predictor.image_size
  try:
    model = jax2onnx.to_onnx(
      logits_and_masks,
      [jax.ShapeDtypeStruct((BATCH, size, size, 3), input_dtype)],
      model_name="unet_jax",
      opset=opset,
      input_names=[INPUT_NAME],
      output_names=list(OUTPUT_NAMES),
    )
  except NotImplementedError as error:
    raise errors.ConfigError(
      f"jax2onnx {importlib.metadata.version('jax2onnx')} cannot convert this model "
      f"(upsample={predictor.model.upsample!r}): {error}"
    ) from error
  # jax2onnx annotates some intermediate values with channels-first shapes where the graph holds channels-last ones;
  # the annotations are optional, and onnxruntime, which infers shapes itself, warns about each. Dropped.
  del model.graph.value_info[:]
  return model


def _session(model: Any) -> Any:
  onnxruntime = _require("onnxruntime")
  if isinstance(model, str | os.PathLike):
    model = os.fspath(model)
  elif not isinstance(model, bytes):
    model = model.SerializeToString()
  return onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])


def check_with_onnxruntime(model: Any, images: np.ndarray) -> dict[str, np.ndarray]:
  """Runs an ONNX model of `to_onnx` in onnxruntime (CPU).

  Args:
    model: an `onnx.ModelProto`, its serialized bytes, or the path of a .onnx file.
    images: [N, S, S, 3] in 0..255, of the dtype the model was exported for.

  Returns:
    {"logits": float32 [N, S, S, C], "masks": int32 [N, S, S]}.
  """
  session = _session(model)
  (expected,) = session.get_inputs()
  images = np.asarray(images)
  dtype = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8}.get(expected.type)
  if dtype is None or images.dtype != dtype or images.ndim != 4 or list(images.shape[1:]) != expected.shape[1:]:
    raise errors.ConfigError(
      f"The ONNX model takes {expected.type} images shaped {expected.shape}; got {images.dtype} {images.shape}."
    )
  return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {INPUT_NAME: images})))
