"""A TF SavedModel of a trained run: `python -m unet_jax.export --workdir DIR --output DIR/saved_model`.

The serving signature takes uint8 RGB images of any size, [N, H, W, 3] (one size per call), and returns
{"masks": int32 [N, H, W]}. Inside: the predictor's own TF resize to the training size, the JAX model converted with
`jax2tf` (native serialization: the StableHLO JAX compiles, weights as tf.Variables) and applied to one image at a
time, and the predictor's logits-to-mask resize back to H x W. So the SavedModel computes what `Predictor` computes.

The model is lowered for a static [1, S, S, 3] input: a symbolic batch dimension makes JAX emit a shape check as a
StableHLO op newer than the one TensorFlow's XlaCallModule reads (TF 2.21 loads no such SavedModel written by
jax >= 0.11), while static shapes load on every TF this package supports. The StableHLO is lowered for CPU and CUDA
(`--platforms`), so the same SavedModel serves on either. TFLite is not offered: native serialization emits an
XlaCallModule op that the TFLite converter does not support.
"""

import functools
from collections.abc import Sequence

import jax
import tensorflow as tf
from absl import app, flags
from jax.experimental import jax2tf

from unet_jax import checkpointing, cli, data, paths, predict

SIGNATURE_KEY = "serving_default"


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


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; options go as --flag=value.")
  options = flags.FLAGS
  output = paths.resolve(options.output)
  predictor = predict.Predictor.from_workdir(paths.resolve(options.workdir), options.checkpoint)
  export_saved_model(predictor, output, options.platforms)
  print(f"Wrote {output}: signature {SIGNATURE_KEY!r} maps uint8 images [N, H, W, 3] to int32 masks [N, H, W].")


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The training run's --workdir.")
  flags.DEFINE_string("checkpoint", "latest", f"Which checkpoint: {checkpointing.CHECKPOINT_CHOICES}.")
  flags.DEFINE_string("output", None, "The SavedModel directory to write (e.g. WORKDIR/saved_model).")
  flags.DEFINE_list(
    "platforms",
    ["cpu", "cuda"],
    "Platforms the exported model runs on (jax2tf native_serialization_platforms: cpu, cuda, rocm, tpu).",
  )
  flags.mark_flags_as_required(["workdir", "output"])


if __name__ == "__main__":
  cli.run(main, name="export", define_flags=_define_flags)
