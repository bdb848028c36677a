"""A trained run as a file another runtime serves: `python -m unet_jax.export --workdir DIR --output PATH
[--format savedmodel|keras|tflite|onnx] [--quantize none|float16|int8]`.

Formats (each written and checked by `export_checked_<format>`; `export_run` is what the command runs):
- `savedmodel` (the default; `export_saved_model`): a TF SavedModel whose serving signature takes uint8 RGB images of
  any size, [N, H, W, 3] (one size per call), and returns {"masks": int32 [N, H, W]}. Inside: the predictor's own TF
  resize to the training size, the JAX model converted with `jax2tf` (native serialization: the StableHLO JAX
  compiles, weights as tf.Variables) and applied to one image at a time, and the predictor's logits-to-mask resize
  back to H x W, test-time flips and scales included. So the SavedModel computes what `Predictor` computes.
- `keras` (`keras_export.to_keras`, `.keras` or legacy `.h5`): the TF tutorial's own Keras model holding the weights.
- `tflite` (`keras_export.to_tflite`): a LiteRT flatbuffer converted from that Keras model, float32, float16 weights,
  or full-integer int8 calibrated on `--calibration_steps` batches of the run's own training stream.
- `onnx` (`onnx_export.to_onnx`): jax2onnx's ONNX model, dynamic batch, for onnxruntime (`pip install -e ".[export]"`).
The keras, tflite and onnx files take images already resized to the model's input size S (bilinearly, as
`data.resize_image` does) and compute the model alone: the run's test-time flips and scales are not in them.

Every export runs its file back in the file's own runtime (TensorFlow, Keras, the LiteRT interpreter, onnxruntime) on
the first `--check_images` images of the run's eval split, at the model's size, and fails (`errors.UserError`, with
the figures) when its masks agree with the JAX model's on fewer pixels than the format's tolerance allows. The
figures go to PATH.json beside the output: format, quantize, size in bytes, mask pixel agreement, and the largest
logit difference where the file outputs logits.

The SavedModel is lowered for a static [1, S, S, 3] input: a symbolic batch dimension makes JAX emit a shape check as
a StableHLO op newer than the one TensorFlow's XlaCallModule reads (TF 2.21 loads no such SavedModel written by
jax >= 0.11), while static shapes load on every TF this package supports. Its StableHLO is lowered for CPU and CUDA
(`--platforms`), so the same SavedModel serves on either. That XlaCallModule op is also why the TFLite file is
converted from the Keras model, not from the SavedModel.
"""

import dataclasses
import functools
import json
import pathlib
import shutil
from collections.abc import Sequence
from typing import Any

import jax
import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import app, flags
from jax.experimental import jax2tf

from unet_jax import checkpointing, cli, data, errors, keras_export, paths, predict

SIGNATURE_KEY = "serving_default"
FORMATS = ("savedmodel", "keras", "tflite", "onnx")
# The fraction of mask pixels that must equal the JAX model's where TensorFlow runs the same StableHLO or the same
# float32 arithmetic in another order: only pixels whose top two classes nearly tie may differ.
FLOAT32_MASK_AGREEMENT = 0.999


def to_tf_module(predictor: predict.Predictor, platforms: Sequence[str] = ("cpu", "cuda")) -> tf.Module:
  """The predictor as a tf.Module, ready for `tf.saved_model.save`.

  Args:
    predictor: a `Predictor` with keep_size=False (the SavedModel resizes to its training size itself).
    platforms: jax2tf native serialization platforms the model is lowered for.

  Returns:
    A tf.Module with the weights as variables and `serve(images uint8 [N, H, W, 3]) -> {"masks": int32 [N, H, W]}`.
  """
  if predictor.keep_size:
    raise ValueError("The SavedModel resizes to the model's training size; export a Predictor with keep_size=False.")
  size = predictor.image_size
  logits_fn = jax2tf.convert(
    functools.partial(
      predict.model_logits, predictor.model, predictor.normalization, predictor.flip_average, predictor.scales
    ),
    with_gradient=False,
    native_serialization_platforms=tuple(platforms),
  )
  module = tf.Module()
  # Variables (not constants folded into the graph): the SavedModel stores the weights once, as checkpoint files.
  module.weights = jax.tree.map(lambda x: tf.Variable(x, trainable=False), jax.device_get(predictor.variables))
  weights = module.weights
  image_logits = tf.TensorSpec([size, size, predictor.num_classes], tf.float32)

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")], autograph=False)
  def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
    resized = data.resize_image(images, size)
    logits = tf.map_fn(lambda image: logits_fn(weights, image[None])[0], resized, fn_output_signature=image_logits)
    return {"masks": predict.masks_from_logits(logits, tf.shape(images)[1:3])}

  module.serve = serve
  return module


def export_saved_model(
  predictor: predict.Predictor, directory: str, platforms: Sequence[str] = ("cpu", "cuda")
) -> None:
  """Writes `to_tf_module(predictor, platforms)` as a SavedModel with the signature `SIGNATURE_KEY`.

  Args:
    predictor: as in `to_tf_module`.
    directory: the SavedModel directory to write.
    platforms: as in `to_tf_module`.
  """
  module = to_tf_module(predictor, platforms)
  tf.saved_model.save(module, directory, signatures={SIGNATURE_KEY: module.serve})


def check_images(config: ml_collections.ConfigDict, count: int) -> np.ndarray:
  """uint8 [count, S, S, 3]: the first `count` images of the run's eval split at the model's size S, as the eval
  stream resizes them, rounded to uint8 (which every format takes)."""
  if count < 1:
    raise errors.ConfigError(f"check_images={count} must be at least 1: every export is checked against JAX.")
  images = []
  for batch in data.eval_batches(config.data, global_batch_size=count, process_index=0, process_count=1):
    images.extend(data.denormalize_to_uint8(batch["image"][batch["weight"] > 0], config.data.normalization))
    if len(images) >= count:
      break
  return np.stack(images[:count])


def _jax_logits(predictor: predict.Predictor, images: np.ndarray) -> np.ndarray:
  """The model's float32 logits on uint8 model-sized images, without test-time augmentation (as the files have it)."""
  logits = jax.jit(functools.partial(predict.model_logits, predictor.model, predictor.normalization, False, (1.0,)))
  return np.asarray(logits(predictor.variables, images.astype(np.float32)))


def _agreement(
  name: str,
  masks: np.ndarray,
  want_masks: np.ndarray,
  min_agreement: float,
  logits: np.ndarray | None = None,
  want_logits: np.ndarray | None = None,
  atol: float | None = None,
) -> dict[str, float | None]:
  """The figures of a file's masks (and logits, where it has them) against JAX's, or a UserError when the masks
  agree on fewer pixels than `min_agreement` or the logits differ by more than `atol` (unless None)."""
  agreement = float((masks == want_masks).mean())
  diff = None if logits is None else float(np.abs(logits - want_logits).max())
  if agreement < min_agreement or (diff is not None and atol is not None and diff > atol):
    logits_text = "" if atol is None else f", logits differ by up to {diff:.3g} (tolerance {atol:g})"
    raise errors.UserError(
      f"The exported {name} disagrees with the JAX model on {len(masks)} eval images: {agreement:.4%} of the mask "
      f"pixels agree (at least {min_agreement:.2%} must){logits_text}. The file is not a faithful export."
    )
  return {"mask_agreement": agreement, "max_abs_logits_diff": diff, "min_mask_agreement": min_agreement}


def export_checked_saved_model(
  predictor: predict.Predictor, output: str, images: np.ndarray, platforms: Sequence[str] = ("cpu", "cuda")
) -> dict[str, Any]:
  """`export_saved_model`, then its masks on `images` against the predictor's (test-time augmentation included)."""
  export_saved_model(predictor, output, platforms)
  serve = tf.saved_model.load(output).signatures[SIGNATURE_KEY]
  masks = serve(images=tf.constant(images))["masks"].numpy()
  return _agreement("SavedModel", masks, np.stack(list(predictor.predict(images))), FLOAT32_MASK_AGREEMENT)


def export_checked_keras(predictor: predict.Predictor, output: str, images: np.ndarray) -> dict[str, Any]:
  """The tutorial's Keras model with the run's weights, saved (`.keras` or `.h5`), loaded back and checked."""
  keras_export.save_keras(keras_export.to_keras(predictor), output)
  logits = keras.saving.load_model(output).predict(images.astype(np.float32), verbose=0)
  want = _jax_logits(predictor, images)
  return _agreement(
    "Keras model",
    logits.argmax(-1),
    want.argmax(-1),
    FLOAT32_MASK_AGREEMENT,
    logits,
    want,
    keras_export.KERAS_LOGITS_ATOL,
  )


def export_checked_tflite(
  predictor: predict.Predictor,
  output: str,
  images: np.ndarray,
  quantize: str = "none",
  config: ml_collections.ConfigDict | None = None,
  calibration_steps: int = 0,
) -> dict[str, Any]:
  """A LiteRT file of the Keras model (`quantize`; int8 calibrated on `calibration_steps` batches of `config`'s
  training stream), written, run back in the interpreter and checked."""
  calibration = keras_export.calibration_images(config, calibration_steps) if quantize == "int8" else None
  content = keras_export.to_tflite(keras_export.to_keras(predictor), quantize, calibration)
  pathlib.Path(output).write_bytes(content)
  outputs = keras_export.run_tflite(output, images)
  want = _jax_logits(predictor, images)
  # The masks decide: float16 and int8 move the logits by design.
  min_agreement = keras_export.TFLITE_MASK_AGREEMENT[quantize]
  name = f"LiteRT model (quantize={quantize})"
  return _agreement(name, outputs["masks"], want.argmax(-1), min_agreement, outputs.get("logits"), want)


def export_checked_onnx(predictor: predict.Predictor, output: str, images: np.ndarray) -> dict[str, Any]:
  """`onnx_export.to_onnx`'s float32 model, written, run back in onnxruntime and checked."""
  from unet_jax import onnx_export

  pathlib.Path(output).write_bytes(onnx_export.to_onnx(predictor).SerializeToString())
  outputs = onnx_export.check_with_onnxruntime(output, images.astype(np.float32))
  want = _jax_logits(predictor, images)
  return _agreement(
    "ONNX model",
    outputs["masks"],
    want.argmax(-1),
    FLOAT32_MASK_AGREEMENT,
    outputs["logits"],
    want,
    onnx_export.LOGITS_ATOL,
  )


def result_path(output: str) -> pathlib.Path:
  """Where the export's figures go: beside the output, its name + ".json"."""
  path = pathlib.Path(output)
  return path.with_name(path.name + ".json")


def _size_in_bytes(path: pathlib.Path) -> int:
  if path.is_dir():
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
  return path.stat().st_size


def _clear(path: pathlib.Path, overwrite: bool) -> None:
  for existing in (path, result_path(str(path))):
    if not existing.exists():
      continue
    if not overwrite:
      raise errors.ConfigError(f"{existing} exists: remove it, choose another --output, or pass --overwrite.")
    shutil.rmtree(existing) if existing.is_dir() else existing.unlink()


def export_run(
  workdir: str,
  output: str,
  format: str = "savedmodel",
  *,
  checkpoint: str | int = "latest",
  quantize: str = "none",
  calibration_steps: int = 8,
  num_check_images: int = 8,
  platforms: Sequence[str] = ("cpu", "cuda"),
  overwrite: bool = False,
) -> dict[str, Any]:
  """Exports one checkpoint of a run as `format`, checks the file against JAX, writes `result_path(output)`.

  Returns:
    The result record written there.
  """
  if format not in FORMATS:
    raise errors.ConfigError(f"format={format!r} is not one of {FORMATS}.")
  if quantize not in keras_export.QUANTIZE_CHOICES:
    raise errors.ConfigError(f"quantize={quantize!r} is not one of {keras_export.QUANTIZE_CHOICES}.")
  if quantize != "none" and format != "tflite":
    raise errors.ConfigError(f"quantize={quantize!r} applies to the tflite format only, not {format!r}.")
  output_path = pathlib.Path(output.rstrip("/") or output)
  _clear(output_path, overwrite)
  run = checkpointing.load_run(workdir, checkpoint)
  predictor = predict.Predictor.from_run(run)
  images = check_images(run.config, num_check_images)
  if format == "savedmodel":
    figures = export_checked_saved_model(predictor, str(output_path), images, platforms)
  else:
    # The files compute the model alone; the run's test-time augmentation, if any, stays with the JAX predictor.
    plain = dataclasses.replace(predictor, flip_average=False, scales=(1.0,))
    if format == "keras":
      figures = export_checked_keras(plain, str(output_path), images)
    elif format == "tflite":
      figures = export_checked_tflite(plain, str(output_path), images, quantize, run.config, calibration_steps)
    else:
      figures = export_checked_onnx(plain, str(output_path), images)
  result = {
    "format": format,
    "quantize": quantize if format == "tflite" else None,
    "output": str(output_path),
    "bytes": _size_in_bytes(output_path),
    "workdir": workdir,
    "step": run.step,
    "test_time_augmentation": format == "savedmodel" and (predictor.flip_average or predictor.scales != (1.0,)),
    "check_images": len(images),
    **figures,
  }
  result_path(str(output_path)).write_text(json.dumps(result, indent=2) + "\n")
  return result


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; options go as --flag=value.")
  options = flags.FLAGS
  result = export_run(
    paths.resolve(options.workdir),
    paths.resolve(options.output),
    options.format,
    checkpoint=options.checkpoint,
    quantize=options.quantize,
    calibration_steps=options.calibration_steps,
    num_check_images=options.check_images,
    platforms=options.platforms,
    overwrite=options.overwrite,
  )
  logits = result["max_abs_logits_diff"]
  print(
    f"Wrote {result['output']} ({result['format']}"
    + (f", quantize {result['quantize']}" if result["quantize"] else "")
    + f", {result['bytes']:,} bytes): its masks agree with the JAX model's on {result['mask_agreement']:.4%} of the "
    f"pixels of {result['check_images']} eval images"
    + ("" if logits is None else f", logits within {logits:.2g}")
    + f"; figures in {result_path(result['output'])}."
  )


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The training run's --workdir.")
  flags.DEFINE_string("checkpoint", "latest", f"Which checkpoint: {checkpointing.CHECKPOINT_CHOICES}.")
  flags.DEFINE_string("output", None, "The file (SavedModel: directory) to write, e.g. WORKDIR/model.onnx.")
  flags.DEFINE_enum("format", "savedmodel", FORMATS, "What to write.")
  flags.DEFINE_enum(
    "quantize", "none", keras_export.QUANTIZE_CHOICES, "tflite only: float32, float16 weights, or full int8."
  )
  flags.DEFINE_integer("calibration_steps", 8, "tflite int8: training-stream batches that calibrate the ranges.")
  flags.DEFINE_integer("check_images", 8, "Eval images the exported file is checked on against the JAX model.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing output (and its .json) instead of refusing.")
  flags.DEFINE_list(
    "platforms",
    ["cpu", "cuda"],
    "savedmodel only: platforms it runs on (jax2tf native_serialization_platforms: cpu, cuda, rocm, tpu).",
  )
  flags.mark_flags_as_required(["workdir", "output"])


if __name__ == "__main__":
  cli.run(main, name="export", define_flags=_define_flags)
