"""Masks for images of any size and mode: `python -m unet_jax.predict --workdir DIR PATH... --output OUT/`.

Python: `Predictor.from_workdir(DIR)(image) -> mask`. Each image becomes uint8 RGB (`image_io`), is resized to the
model's input size the way the eval stream resizes (bilinear, 0..255) — or with `keep_size`, padded by reflection to
a multiple of 32 — and predicted in batches; the logits are resized back to the image's own size (bilinear, so that
boundaries stay smooth) before the argmax. The resize and normalisation are the eval stream's own
(`data.resize_image`, `data.normalize_image`), and the exported SavedModel (`export.py`) runs the same TF ops in its
graph, so it computes exactly what this module computes.

Memory is bounded by `image_io.MAX_PIXELS` (16.8 MP): a larger file is read downscaled to fit it, its mask written
at the file's own size (upscaled by nearest neighbour, 1 byte a pixel) and its overlay at the reduced size, each with
a logged warning; a larger array given to `Predictor` gets its logits resized to the reduced size and the mask
upscaled the same way. `keep_size` predicts at full resolution, so it refuses such an image (`errors.ConfigError`).
"""

import dataclasses
import math
import pathlib
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from tqdm import tqdm

from unet_jax import checkpointing, cli, data, errors, image_io, paths
from unet_jax.models.unet import INPUT_MULTIPLE, inference_logits


def model_logits(
  model: nn.Module,
  normalization: str,
  flip_average: bool,
  scales: tuple[float, ...],
  variables: dict[str, Any],
  images: jax.Array,
) -> jax.Array:
  """float32 logits [N, h, w, C] of float32 images [N, h, w, 3] in 0..255 (h, w multiples of 32)."""
  return inference_logits(model, variables, data.normalize_image(images, normalization), flip_average, scales)


# Module-level, so that every Predictor of the same model (modules compare by their fields) shares the compiled program.
_jitted_model_logits = jax.jit(model_logits, static_argnums=(0, 1, 2, 3))


def masks_from_logits(logits: Any, size: Any) -> tf.Tensor:
  """int32 masks [N, H, W]: the logits resized (bilinear) to the image size `size` = (H, W), then the argmax."""
  return tf.argmax(tf.image.resize(logits, size), axis=-1, output_type=tf.int32)


@dataclasses.dataclass(frozen=True)
class Predictor:
  """`predictor(image) -> mask`: int32 [H, W] class ids for an image array of any size (see `image_io.to_rgb`).

  `predict(images)` streams many images through batches of `batch_size` (the last one padded, so that one program
  serves every batch); with `keep_size`, consecutive images of the same padded size share a batch, of fewer images
  when they are large (at most `image_io.MAX_PIXELS` pixels a batch, and one image at most that).

  Args:
    model: the U-Net; variables: its {"params", "batch_stats"}.
    image_size: the square input size the model was trained at (ignored with `keep_size`).
    normalization: the run's `config.data.normalization`.
    num_classes: the number of classes the masks hold.
    batch_size: images per batch in `predict`.
    keep_size: predict at each image's own size (padded by reflection to a multiple of 32) instead of resizing.
    flip_average, scales: the test-time augmentation, as the run's eval did it.
  """

  model: nn.Module
  variables: dict[str, Any]  # {"params", "batch_stats"}
  image_size: int
  normalization: str
  num_classes: int
  batch_size: int = 8
  keep_size: bool = False
  flip_average: bool = False  # Test-time flips, as the run's eval did (config.eval_flip_average).
  scales: tuple[float, ...] = (1.0,)  # Test-time scales, as the run's eval did (config.eval_scales).

  def __post_init__(self):
    if self.batch_size < 1:
      raise errors.ConfigError(f"batch_size={self.batch_size} must be at least 1.")

  @classmethod
  def from_workdir(cls, workdir: str, checkpoint: str | int = "latest", **options) -> "Predictor":
    """The predictor of one checkpoint of a training run.

    Args:
      workdir: the run's --workdir.
      checkpoint: 'latest' (the newest readable), 'best' (by eval mean IoU) or a step number.
      **options: batch_size, keep_size (the test-time augmentation is the run's own).

    Returns:
      The Predictor, its state on this process's first local device.
    """
    return cls.from_run(checkpointing.load_run(workdir, checkpoint), **options)

  @classmethod
  def from_run(cls, run: checkpointing.TrainedRun, **options) -> "Predictor":
    # One device: a single image gains nothing from the data-parallel mesh the run was restored on. A local one: in
    # a multi-process run, jax.devices()[0] belongs to process 0 and the others cannot place arrays on it.
    variables = jax.device_put(
      {"params": run.state.params, "batch_stats": run.state.batch_stats}, jax.local_devices()[0]
    )
    options = {"flip_average": run.config.eval_flip_average, "scales": tuple(run.config.eval_scales), **options}
    return cls(
      run.model,
      variables,
      run.config.data.image_size,
      run.config.data.normalization,
      run.config.model.num_classes,
      **options,
    )

  def check_size(self, height: int, width: int, name: str = "An image") -> None:
    """With `keep_size`, an image over `image_io.MAX_PIXELS` is an error: at full resolution it would exhaust memory."""
    if self.keep_size and height * width > image_io.MAX_PIXELS:
      raise errors.ConfigError(
        f"{name} of {width}x{height} = {height * width:,} pixels is over the {image_io.MAX_PIXELS:,} that keep_size "
        f"predicts at full resolution (image_io.MAX_PIXELS; the model's activations grow with the pixels): use "
        f"keep_size=False (--nokeep_size), which resizes it to the model's {self.image_size} px input, or crop it."
      )

  def model_input(self, image: np.ndarray) -> np.ndarray:
    """float32 [h, w, 3] in 0..255 as the model sees the uint8 RGB `image`: resized, or padded with `keep_size`."""
    if self.keep_size:
      height, width = image.shape[:2]
      self.check_size(height, width)
      padding = ((0, -height % INPUT_MULTIPLE), (0, -width % INPUT_MULTIPLE), (0, 0))
      return np.pad(image, padding, mode="reflect").astype(np.float32)
    return data.resize_image(image, self.image_size).numpy()

  def _masks(self, inputs: list[np.ndarray], sizes: list[tuple[int, int]], batch_size: int) -> list[np.ndarray]:
    batch = np.zeros((batch_size, *inputs[0].shape), np.float32)
    batch[: len(inputs)] = inputs
    logits = np.asarray(
      _jitted_model_logits(self.model, self.normalization, self.flip_average, self.scales, self.variables, batch)
    )
    if self.keep_size:
      return [logits[index, :height, :width].argmax(-1).astype(np.int32) for index, (height, width) in enumerate(sizes)]
    return [_mask_of_size(logits[index : index + 1], size) for index, size in enumerate(sizes)]

  def predict(self, images: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """One mask per image, in order, computed a batch at a time.

    Args:
      images: arrays of any size and mode (`image_io.to_rgb`), read lazily: a generator works.

    Yields:
      int32 [H, W] class ids, each at its image's own size.
    """
    inputs: list[np.ndarray] = []
    sizes: list[tuple[int, int]] = []
    for image in images:
      image = image_io.to_rgb(image)
      model_input = self.model_input(image)
      if inputs and model_input.shape != inputs[0].shape:
        yield from self._masks(inputs, sizes, self._batch_for(inputs[0].shape))
        inputs, sizes = [], []
      inputs.append(model_input)
      sizes.append(image.shape[:2])
      if len(inputs) == self._batch_for(model_input.shape):
        yield from self._masks(inputs, sizes, len(inputs))
        inputs, sizes = [], []
    if inputs:
      yield from self._masks(inputs, sizes, self._batch_for(inputs[0].shape))

  def _batch_for(self, shape: tuple[int, ...]) -> int:
    """`batch_size`, or with `keep_size` fewer images of a large padded `shape`, so that no forward pass holds more
    than MAX_PIXELS pixels (the model's activations take ~320 bytes a pixel at its default size)."""
    if not self.keep_size:
      return self.batch_size
    return max(1, min(self.batch_size, image_io.MAX_PIXELS // (shape[0] * shape[1])))

  def __call__(self, image: np.ndarray) -> np.ndarray:
    image = image_io.to_rgb(image)
    return self._masks([self.model_input(image)], [image.shape[:2]], batch_size=1)[0]


def _mask_of_size(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """int32 [H, W] of logits [1, h, w, C]; over MAX_PIXELS, resized logits would take H x W x C floats: the mask is
  computed at a size within the limit and upscaled (nearest neighbour)."""
  reduced = image_io.bounded_size(*size, image_io.MAX_PIXELS)
  if reduced == tuple(size):
    return masks_from_logits(logits, size).numpy()[0]
  logging.warning(
    "An image of %dx%d = %s pixels is over image_io.MAX_PIXELS (%s): its mask is computed at %dx%d "
    "and upscaled (nearest neighbour).",
    size[1],
    size[0],
    f"{size[0] * size[1]:,}",
    f"{image_io.MAX_PIXELS:,}",
    reduced[1],
    reduced[0],
  )
  return image_io.upscale_mask(masks_from_logits(logits, reduced).numpy()[0], size)


def find_inputs(paths: Sequence[str]) -> list[tuple[pathlib.Path, pathlib.Path]]:
  """(file, output name) of every image under `paths`; an error, before any model loads, when there is none."""
  files = image_io.find_images(paths)
  if not files:
    raise errors.InputNotFoundError(
      f"No image files under {', '.join(map(str, paths))}: a directory is searched "
      f"recursively for the extensions PIL opens (.png, .jpg, .bmp, .tif, .webp, ...)."
    )
  image_io.check_unique_names(files)
  return files


def predict_files(
  predictor: Predictor, files: Sequence[tuple[pathlib.Path, pathlib.Path]], output: str
) -> list[tuple[str, str]]:
  """Writes <name>_mask.png and <name>_overlay.png under `output` for each (file, name) of `find_inputs`.

  Returns the (file, reason) of each file that could not be read; those are skipped, the rest still predicted. A file
  over `image_io.MAX_PIXELS` is predicted downscaled: its mask is upscaled to the file's size, its overlay is not.
  """
  colors = image_io.palette(predictor.num_classes)
  failures: list[tuple[str, str]] = []
  # Read, waiting for their masks (at most a batch): (output name, image as predicted, the file's own size).
  readable: list[tuple[pathlib.Path, np.ndarray, tuple[int, int]]] = []
  progress = tqdm(total=len(files), desc="predict", unit="image")

  def images() -> Iterator[np.ndarray]:
    for file, name in files:
      try:
        # keep_size reads whole: check_size then refuses what is too large, rather than predict it downscaled.
        image, size = image_io.read_image_and_size(file, math.inf if predictor.keep_size else None)
      except image_io.ImageReadError as error:
        logging.error("Skipped: %s", error)
        failures.append((str(file), str(error)))
        progress.update()
        continue
      predictor.check_size(*image.shape[:2], name=str(file))
      readable.append((name, image, size))
      yield image

  for mask in predictor.predict(images()):
    name, image, size = readable.pop(0)
    base = pathlib.Path(output) / name
    mask = np.asarray(mask, np.uint8)  # 1 byte a pixel at the file's size; the palette holds at most 256 classes.
    image_io.save_image(f"{base}_overlay.png", image_io.overlay(image, mask, colors))
    image_io.save_mask(f"{base}_mask.png", image_io.upscale_mask(mask, size) if size != mask.shape else mask, colors)
    progress.update()
  progress.close()
  return failures


def main(argv: Sequence[str]) -> None:
  inputs = [paths.resolve(path) for path in argv[1:]]
  if not inputs:
    raise app.UsageError("Give the images to predict: files and/or directories after the flags.")
  options = flags.FLAGS
  files = find_inputs(inputs)
  workdir = paths.resolve(options.workdir)
  checkpointing.check_workdir(workdir)
  config = checkpointing.load_config(workdir)
  cli.use_compilation_cache(config.compilation_cache_dir)  # Before anything compiles.
  predictor = Predictor.from_run(
    checkpointing.load_run(workdir, options.checkpoint, config),
    batch_size=options.batch_size,
    keep_size=options.keep_size,
  )
  failures = predict_files(predictor, files, paths.resolve(options.output))
  if failures:
    print(f"{len(failures)} file(s) could not be read and were skipped:", file=sys.stderr)
    for file, reason in failures:
      print(f"  {file}: {reason}", file=sys.stderr)
    sys.exit(1)


def _define_flags() -> None:
  """Only for the program: importing this module must claim no flag names (export imports it)."""
  flags.DEFINE_string("workdir", None, "The training run's --workdir (checkpoints and config.json).")
  flags.DEFINE_string(
    "checkpoint", "latest", f"Which checkpoint: {checkpointing.CHECKPOINT_CHOICES} (by eval mean IoU)."
  )
  flags.DEFINE_string(
    "output",
    None,
    "Folder for <name>_mask.png (class ids, with a palette) and <name>_overlay.png "
    "per image; sub-folders of an input directory are kept.",
  )
  flags.DEFINE_bool(
    "keep_size",
    False,
    "Predict at each image's own resolution (padded to a multiple of "
    f"{INPUT_MULTIPLE}) instead of resizing it to the model's training size.",
  )
  flags.DEFINE_integer("batch_size", 8, "Images per forward pass.")
  flags.mark_flags_as_required(["workdir", "output"])


if __name__ == "__main__":
  cli.run(main, name="predict", define_flags=_define_flags)
