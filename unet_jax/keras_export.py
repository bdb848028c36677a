"""The TF tutorial's own Keras model with a run's weights, and LiteRT (TFLite) models made from it.

`to_keras(predictor)` builds the segmentation tutorial's Keras 3 model, `keras.applications.MobileNetV2` down stack
(the five `TAPS`), pix2pix upsample blocks (Conv2DTranspose, BatchNormalization, Dropout, ReLU) concatenated with the
skips, and a last Conv2DTranspose to the classes; the nearest decoder's blocks are UpSampling2D(nearest) + a 3x3
Conv2D instead. The weights are the exact inverse of `pretrained.unet_variables_from_keras`. A first Rescaling layer
("normalize") applies the run's normalisation, so the model maps float32 RGB 0..255 "images" [N, S, S, 3] to float32
logits [N, S, S, num_classes]: `predict.model_logits` without the run's test-time flips and scales. A bfloat16 run
exports in float32 (its parameters are float32).

`to_tflite(keras_model, quantize)` converts it with Keras' LiteRT export (`model.export(format="litert")`, which
runs `tf.lite.TFLiteConverter` on a SavedModel of the model), builtin ops only. One signature, "serving_default",
of a fixed batch of 1:
- quantize "none" / "float16" (float16 weights, float32 compute): input "images" float32 [1, S, S, 3] RGB 0..255;
  outputs "logits" float32 [1, S, S, num_classes] and "masks" int32 [1, S, S] (their argmax).
- quantize "int8" (full-integer post-training quantization, calibrated on `representative_images`, e.g.
  `calibration_images` of the run's training stream): input "images" uint8 [1, S, S, 3], the RGB values as they are
  (its quantization is the identity, scale 1 and zero point 0; the normalisation runs inside the graph);
  output "masks" int32 [1, S, S]. Logits are not an output: as int8 they would only approximate the argmax already
  taken inside the graph.
On a device, resize the camera image to S x S bilinearly first (as `data.resize_image` does: `tf.image.resize`,
half-pixel centres, no antialiasing), and bring the S x S mask back to the image's size by nearest neighbour, or
resize the float logits bilinearly before the argmax as `predict.Predictor` does.

`run_tflite(model, images)` runs a model back in LiteRT's interpreter (`ai_edge_litert`, else TensorFlow's
`tf.lite.Interpreter`); `TFLITE_MASK_AGREEMENT` is the fraction of mask pixels that must equal the JAX model's, per
quantize mode.
"""

import os
import pathlib
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import keras
import ml_collections
import numpy as np
import tensorflow as tf

from unet_jax import data, errors, predict, pretrained
from unet_jax.models.mobilenet_v2 import KERAS_ALPHAS, TAPS

QUANTIZE_CHOICES = ("none", "float16", "int8")
KERAS_SUFFIXES = (".keras", ".h5")
INPUT_NAME = "images"
# The fraction of mask pixels that must equal the JAX model's. float32 and float16 differ from JAX by rounding
# (~1e-6 and ~1e-3 of the logits), which flips only pixels whose top two classes are nearly tied; int8 moves the
# logits by a few quantization steps.
TFLITE_MASK_AGREEMENT = {"none": 0.999, "float16": 0.995, "int8": 0.95}
# The keras model's logits against the JAX model's (float32, different summation order).
KERAS_LOGITS_ATOL = 1e-4

_NORMALIZE_LAYER = "normalize"


def _normalization_affine(normalization: str) -> tuple[float, float]:
  """(scale, offset) of the run's normalisation, which is affine: `data.normalize_image(x) = x * scale + offset`."""
  offset = float(data.normalize_image(np.float64(0.0), normalization))
  return (float(data.normalize_image(np.float64(255.0), normalization)) - offset) / 255, offset


def _check_keras_backend() -> None:
  if keras.backend.backend() != "tensorflow":
    raise errors.ConfigError(
      f"The Keras export builds TensorFlow Keras models, but Keras runs on the {keras.backend.backend()!r} backend: "
      f"unset KERAS_BACKEND (or set it to 'tensorflow')."
    )


def _check_exportable(model: Any) -> None:
  if model.alpha not in KERAS_ALPHAS:
    raise errors.ConfigError(
      f"keras.applications.MobileNetV2 has no alpha={model.alpha} (its alphas: {KERAS_ALPHAS}); a model of another "
      f"width can be exported as savedmodel or onnx."
    )


def _upsample_block(index: int, filters: int, upsample: str, dropout_rate: float) -> keras.Sequential:
  """pix2pix.upsample (or the nearest decoder's block) as a Sequential, as the tutorial builds each block."""
  name = f"up_{index}"
  if upsample == "transpose":
    conv = [keras.layers.Conv2DTranspose(filters, 3, strides=2, padding="same", use_bias=False, name=f"{name}_conv")]
  else:
    conv = [
      keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{name}_upsample"),
      keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv"),
    ]
  dropout = [keras.layers.Dropout(dropout_rate, name=f"{name}_dropout")] if dropout_rate else []
  return keras.Sequential(
    [*conv, keras.layers.BatchNormalization(epsilon=1e-3, name=f"{name}_bn"), *dropout, keras.layers.ReLU()],
    name=name,
  )


def _last_layers(num_classes: int, upsample: str) -> list[keras.layers.Layer]:
  if upsample == "transpose":
    return [keras.layers.Conv2DTranspose(num_classes, 3, strides=2, padding="same", name="last")]
  return [
    keras.layers.UpSampling2D(2, interpolation="nearest", name="last_upsample"),
    keras.layers.Conv2D(num_classes, 3, padding="same", name="last"),
  ]


def _keras_weights(variables: dict[str, Any]) -> dict[str, list[np.ndarray]]:
  """Keras layer name -> weights: the inverse of `pretrained.mobilenet_v2_variables` and
  `pretrained.unet_variables_from_keras` (BatchNorm [gamma, beta, moving_mean, moving_variance]; depthwise kernels
  (kh, kw, C, 1))."""
  params, stats = jax.device_get(variables["params"]), jax.device_get(variables["batch_stats"])
  weights = {}
  for name, layer in params["encoder"].items():
    if "scale" in layer:
      weights[name] = [layer["scale"], layer["bias"], *(stats["encoder"][name][key] for key in ("mean", "var"))]
    else:
      weights[name] = [layer["kernel"].transpose(0, 1, 3, 2) if name.endswith("depthwise") else layer["kernel"]]
  for name in (key for key in params if key.startswith("up_")):
    bn, bn_stats = params[name]["bn"], stats[name]["bn"]
    weights[f"{name}_conv"] = [params[name]["conv"]["kernel"]]
    weights[f"{name}_bn"] = [bn["scale"], bn["bias"], bn_stats["mean"], bn_stats["var"]]
  weights["last"] = [params["last"]["kernel"], params["last"]["bias"]]
  return {name: [np.asarray(array, np.float32) for array in arrays] for name, arrays in weights.items()}


def to_keras(predictor: predict.Predictor) -> keras.Model:
  """The tutorial's Keras model holding the predictor's variables.

  Args:
    predictor: the run's `Predictor` (its model, variables, image size and normalisation).

  Returns:
    A Keras 3 model: float32 RGB 0..255 "images" [N, S, S, 3] -> float32 logits [N, S, S, num_classes].
  """
  _check_keras_backend()
  model, size = predictor.model, predictor.image_size
  _check_exportable(model)
  base = keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=model.alpha, include_top=False, weights=None)
  down_stack = keras.Model(base.input, [base.get_layer(name).output for name in TAPS], name="down_stack")
  images = keras.Input((size, size, 3), name=INPUT_NAME)
  scale, offset = _normalization_affine(predictor.normalization)
  skips = down_stack(keras.layers.Rescaling(scale, offset, name=_NORMALIZE_LAYER)(images))
  x = skips[-1]
  for index, (filters, skip) in enumerate(zip(model.decoder_filters, reversed(skips[:-1]))):
    x = _upsample_block(index, filters, model.upsample, model.dropout_rate)(x)
    x = keras.layers.Concatenate(name=f"up_{index}_concat")([x, skip])
  for layer in _last_layers(predictor.num_classes, model.upsample):
    x = layer(x)
  keras_model = keras.Model(images, x, name="unet")

  weights = _keras_weights(predictor.variables)
  for layer in pretrained._leaf_layers(keras_model):  # The order and nesting the inverse reads.
    if layer.weights:
      layer.set_weights(weights.pop(layer.name))
  if weights:
    raise AssertionError(f"Variables without a Keras layer: {sorted(weights)}")
  return keras_model


def save_keras(keras_model: keras.Model, path: str | os.PathLike) -> None:
  """Saves Keras 3's native `.keras` archive, or the legacy HDF5 `.h5`, by the path's suffix; never overwrites."""
  path = pathlib.Path(path)
  if path.suffix not in KERAS_SUFFIXES:
    raise errors.ConfigError(
      f"{path}: a Keras model is saved as {' or '.join(KERAS_SUFFIXES)} (native or legacy HDF5); name the output "
      f"e.g. {path.with_suffix('.keras')}."
    )
  if path.exists():
    raise errors.ConfigError(f"{path} exists; remove it or choose another output path.")
  keras_model.save(path)


class _ClassIds(keras.layers.Layer):
  """The argmax over classes as TFLite's builtin ARG_MAX (`keras.ops.argmax` adds ops that order -0.0 below 0.0,
  which TFLite's builtins lack)."""

  def call(self, logits: tf.Tensor) -> tf.Tensor:
    return tf.argmax(logits, axis=-1, output_type=tf.int32)


def _serving_model(keras_model: keras.Model, outputs: tuple[str, ...]) -> keras.Model:
  """The model with its logits and their argmax ("masks") as named outputs, those in `outputs`."""
  images = keras.Input(keras_model.input_shape[1:], name=INPUT_NAME)
  logits = keras_model(images)
  named = {"logits": logits, "masks": _ClassIds(name="masks")(logits)}
  return keras.Model(images, {name: named[name] for name in outputs}, name=f"{keras_model.name}_serving")


def _representative_dataset(images: Iterable[np.ndarray]):
  """Calibration inputs one image at a time, as the converter feeds them to the float model (0..255)."""

  def samples():
    pinned = False
    for batch in images:
      batch = np.asarray(batch)
      for image in batch.reshape(-1, *batch.shape[-3:]).astype(np.float32):
        if not pinned:
          # The input's range is [0, 255] then, so its quantization is the identity and uint8 images go in as they
          # are, whatever range the calibration images happen to cover.
          image[0, 0, 0], image[0, 1, 0], pinned = 0.0, 255.0, True
        yield {INPUT_NAME: image[None]}

  return samples


def to_tflite(
  keras_model: keras.Model, quantize: str = "none", representative_images: Iterable[np.ndarray] | None = None
) -> bytes:
  """A LiteRT flatbuffer of `to_keras`'s model; see the module docstring for its inputs and outputs.

  Args:
    keras_model: the model `to_keras` returns.
    quantize: one of `QUANTIZE_CHOICES`.
    representative_images: for "int8": uint8 (or float 0..255) images [S, S, 3] or batches [N, S, S, 3] that
      calibrate the activation ranges, e.g. `calibration_images(config, steps)`.

  Returns:
    The .tflite file's bytes.
  """
  _check_keras_backend()
  if quantize not in QUANTIZE_CHOICES:
    raise errors.ConfigError(f"quantize={quantize!r} is not one of {QUANTIZE_CHOICES}.")
  if quantize == "int8" and representative_images is None:
    raise errors.ConfigError(
      "int8 quantization needs representative images to calibrate on, e.g. calibration_images(config, steps) of the "
      "run's training stream."
    )
  serving = _serving_model(keras_model, ("masks",) if quantize == "int8" else ("logits", "masks"))
  options: dict[str, Any] = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
  if quantize == "float16":
    options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    options["target_spec"]["supported_types"] = [tf.float16]
  elif quantize == "int8":
    options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    options["representative_dataset"] = _representative_dataset(representative_images)
    options["target_spec"]["supported_ops"] = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    options["inference_input_type"] = tf.uint8
  spec = tf.TensorSpec([1, *keras_model.input_shape[1:]], tf.float32, name=INPUT_NAME)
  with tempfile.TemporaryDirectory() as directory:
    path = os.path.join(directory, "model.tflite")
    serving.export(path, format="litert", input_signature=[spec], verbose=False, **options)
    return pathlib.Path(path).read_bytes()


def calibration_images(config: ml_collections.ConfigDict, steps: int) -> Iterator[np.ndarray]:
  """uint8 images [S, S, 3] of the first `steps` batches of the run's training stream, as the trainer builds it
  (the whole split, augmented), its padding rows left out.

  The stream yields normalised images; they are mapped back to 0..255 by the normalisation's inverse.
  """
  if steps < 1:
    raise errors.ConfigError(f"calibration steps={steps} must be at least 1.")
  batches = data.train_batches(
    config.data, global_batch_size=config.batch_size, seed=config.seed, process_index=0, process_count=1
  )
  for _, batch in zip(range(steps), batches):
    yield from data.denormalize_to_uint8(batch["image"][batch["weight"] > 0], config.data.normalization)


def _interpreter_class() -> Any:
  """LiteRT's interpreter (`ai_edge_litert`, in the export extra), else TensorFlow's, which it supersedes."""
  try:
    from ai_edge_litert import interpreter
  except ImportError:
    return tf.lite.Interpreter
  return interpreter.Interpreter


def run_tflite(model: bytes | str | os.PathLike, images: np.ndarray) -> dict[str, np.ndarray]:
  """Runs a `to_tflite` model on uint8 images [N, S, S, 3], one at a time.

  Returns:
    {"masks": int32 [N, S, S]} and, where the model has them, {"logits": float32 [N, S, S, num_classes]}.
  """
  content = model if isinstance(model, bytes) else pathlib.Path(model).read_bytes()
  runner = _interpreter_class()(model_content=content).get_signature_runner()
  dtype = runner.get_input_details()[INPUT_NAME]["dtype"]
  outputs = [runner(**{INPUT_NAME: image[None].astype(dtype)}) for image in np.asarray(images, np.uint8)]
  return {name: np.concatenate([output[name] for output in outputs]) for name in outputs[0]}
