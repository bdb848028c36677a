"""Train and eval streams: tf.data pipelines that yield numpy batches for this process.

Preprocessing follows the TF segmentation tutorial: the image resized bilinearly and the mask with nearest
neighbour to `image_size`, class ids {0 object, 1 background, 2 border}. The image is then normalised as the
config says: "minus_one_to_one" (x / 127.5 - 1, what the ImageNet MobileNetV2 encoder was trained with; the
default) or "zero_to_one" (x / 255, the tutorial's choice, a known mismatch with that encoder).

Train: cache -> per epoch (shuffle with the epoch's seed -> batch) -> augment -> prefetch. Each epoch's shuffle is
seeded by (seed, epoch) and each batch's augmentation by (seed, step, process): step k of the stream is a pure
function of (seed, k), so a run resumed at step k skips straight to k's epoch and sees exactly the batches an
uninterrupted run sees. Augmentation runs after the cache, so every epoch gets new flips. With `drop_remainder`
each epoch's last partial batch is dropped; without, it is kept as the tutorial's `.batch()` keeps it, padded to
the batch size with rows of weight 0 (shapes stay static, so nothing recompiles) that the train step leaves out of
the loss and of BatchNorm's statistics.

Every batch, train and eval, carries "weight": float32 [B], 1.0 for a real example and 0.0 for padding.

Multi-host: each process reads its own contiguous part of the split and yields its slice of every global batch.
"""

import functools
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from unet_jax import errors
from unet_jax.data import folder, tfds_source
from unet_jax.data.source import Shard

NORMALIZATIONS = ("minus_one_to_one", "zero_to_one")
_FOREVER = np.iinfo(np.int64).max


def check_global_batch_size(global_batch_size: int) -> None:
  """Raises ValueError unless every device gets the same share of the global batch."""
  devices = jax.device_count()
  if global_batch_size <= 0 or global_batch_size % devices:
    suggestion = max(devices, round(global_batch_size / devices) * devices)
    raise errors.ConfigError(
      f"batch_size={global_batch_size} is the global batch size and must be a positive multiple of the "
      f"{devices} devices ({jax.process_count()} process(es) x {jax.local_device_count()} local devices), so "
      f"every device gets the same share. Use e.g. --config.batch_size={suggestion}."
    )


def _check_config(data_config: ml_collections.ConfigDict) -> None:
  if data_config.normalization not in NORMALIZATIONS:
    raise errors.ConfigError(f"config.data.normalization={data_config.normalization!r}; use one of {NORMALIZATIONS}.")
  if data_config.image_size <= 0:
    raise errors.ConfigError(f"config.data.image_size={data_config.image_size} must be positive.")
  if data_config.eval_mask_size < 0:
    raise errors.ConfigError(
      f"config.data.eval_mask_size={data_config.eval_mask_size} must be positive, or 0 for image_size."
    )


def _processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """Defaults to jax's; tests pass them to simulate several processes in one."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count}).")
  return process_index, process_count


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  check_global_batch_size(global_batch_size)
  if global_batch_size % process_count:
    raise errors.ConfigError(
      f"batch_size={global_batch_size} does not divide among {process_count} processes; use a "
      f"multiple of {process_count}."
    )
  return global_batch_size // process_count


def _source(data_config: ml_collections.ConfigDict):
  return folder if data_config.name == "folder" else tfds_source


def num_examples(data_config: ml_collections.ConfigDict, split: str) -> int:
  """Examples in the whole split (all processes together)."""
  return _source(data_config).num_examples(data_config, split)


def _open_shard(data_config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int) -> Shard:
  return _source(data_config).open_shard(data_config, split, process_index, process_count)


def steps_per_epoch(
  data_config: ml_collections.ConfigDict, *, global_batch_size: int, process_count: int | None = None
) -> int:
  """Train steps in one pass over `train_split`: what `train_batches` yields per epoch."""
  _, process_count = _processes(0, process_count)
  shard = _open_shard(data_config, data_config.train_split, 0, process_count)
  return _steps_per_epoch(data_config, shard.shard_sizes, global_batch_size)


def _steps_per_epoch(
  data_config: ml_collections.ConfigDict, shard_sizes: tuple[int, ...], global_batch_size: int
) -> int:
  """The same on every process: the smallest shard decides when the remainder is dropped (every step full), the
  largest when it is kept (every example seen, the smaller shards padded)."""
  local_batch_size = _local_batch_size(global_batch_size, len(shard_sizes))
  if not data_config.drop_remainder:
    return -(-max(shard_sizes) // local_batch_size)
  steps = min(shard_sizes) // local_batch_size
  if steps == 0:
    raise errors.ConfigError(
      f"the train split {data_config.train_split!r} has {sum(shard_sizes)} examples ({min(shard_sizes)} on the "
      f"smallest of {len(shard_sizes)} process shards), fewer than one batch of {global_batch_size} "
      f"({local_batch_size} per process); lower --config.batch_size, or set --config.data.drop_remainder=False."
    )
  return steps


def _with_padding(examples: tf.data.Dataset, total: int, image_size: int, mask_size: int) -> tf.data.Dataset:
  """`examples` with "weight" 1.0, then rows of weight 0.0 (zero image and mask) up to `total` rows."""
  padding = tf.data.Dataset.from_tensors(
    {
      "image": tf.zeros([image_size, image_size, 3]),
      "mask": tf.zeros([mask_size, mask_size], tf.uint8),
      "weight": tf.constant(0.0),
    }
  ).repeat()
  return examples.map(lambda ex: {**ex, "weight": tf.constant(1.0)}).concatenate(padding).take(total)


def resize_image(image, image_size: int) -> tf.Tensor:
  """uint8 [..., H, W, 3] -> float32 [..., S, S, 3], still 0..255: bilinear, as the tutorial (and the eval stream)."""
  return tf.image.resize(image, [image_size, image_size])


def normalize_image(image, normalization: str):
  """Float 0..255 -> the model's input range. Plain arithmetic, so tf, numpy and jax arrays all work."""
  if normalization == "minus_one_to_one":
    return image / 127.5 - 1
  if normalization == "zero_to_one":
    return image / 255
  raise errors.ConfigError(f"normalization={normalization!r}; use one of {NORMALIZATIONS}.")


def denormalize_to_uint8(image: np.ndarray, normalization: str) -> np.ndarray:
  """`normalize_image`'s inverse, rounded: a stream's images as the uint8 pixels a deployed model is fed. The
  normalisation is affine, so its values at 0 and 255 invert it."""
  zero, full = (float(normalize_image(np.float64(value), normalization)) for value in (0.0, 255.0))
  return np.clip(np.rint((np.asarray(image) - zero) * 255 / (full - zero)), 0, 255).astype(np.uint8)


def _resize(example: dict[str, tf.Tensor], image_size: int, mask_size: int = 0) -> dict[str, tf.Tensor]:
  """Tutorial semantics: bilinear image (float32, still 0..255) and nearest-neighbour mask (uint8, `mask_size`,
  0 meaning `image_size`)."""
  mask_size = mask_size or image_size
  mask = tf.image.resize(example["mask"], [mask_size, mask_size], method="nearest")[..., 0]
  return {"image": resize_image(example["image"], image_size), "mask": mask}


def _normalize(batch: dict[str, tf.Tensor], normalization: str) -> dict[str, tf.Tensor]:
  return {**batch, "image": normalize_image(batch["image"], normalization), "mask": tf.cast(batch["mask"], tf.int32)}


def _random_zoom(image: tf.Tensor, mask: tf.Tensor, key: tf.Tensor, max_zoom: float) -> tuple[tf.Tensor, tf.Tensor]:
  """Zooms each example in by a factor in [1, max_zoom] around a random window (same window for image and mask)."""
  n, size = tf.shape(image)[0], tf.shape(image)[1:3]
  zoom_key, offset_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
  extent = 1 / tf.random.stateless_uniform([n, 1], zoom_key, 1.0, max_zoom)
  start = tf.random.stateless_uniform([n, 2], offset_key) * (1 - extent)
  boxes = tf.concat([start, start + extent], axis=1)  # [y1, x1, y2, x2], normalised.
  indices = tf.range(n)
  image = tf.image.crop_and_resize(image, boxes, indices, size)
  mask = tf.image.crop_and_resize(tf.cast(mask[..., None], tf.float32), boxes, indices, size, method="nearest")
  return image, tf.cast(mask[..., 0], tf.uint8)


def _random_brightness_contrast(image: tf.Tensor, key: tf.Tensor, brightness: float, contrast: float) -> tf.Tensor:
  """Per example: contrast scaled by a factor in [1 - contrast, 1 + contrast], brightness shifted by up to
  `brightness` of the 0..255 range."""
  n = tf.shape(image)[0]
  factor_key, shift_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
  factor = tf.random.stateless_uniform([n, 1, 1, 1], factor_key, 1 - contrast, 1 + contrast)
  shift = tf.random.stateless_uniform([n, 1, 1, 1], shift_key, -brightness, brightness) * 255
  mean = tf.reduce_mean(image, axis=[1, 2, 3], keepdims=True)
  return tf.clip_by_value((image - mean) * factor + mean + shift, 0, 255)


def _augment(batch: dict[str, tf.Tensor], key: tf.Tensor, augment: ml_collections.ConfigDict) -> dict[str, tf.Tensor]:
  """Stateless: the same key gives the same augmentation, whatever ran before."""
  image, mask = batch["image"], batch["mask"]
  zoom_key, flip_key, colour_key = tf.unstack(tf.random.experimental.stateless_split(key, 3))
  if augment.scale_crop:
    image, mask = _random_zoom(image, mask, zoom_key, augment.max_zoom)
  if augment.flip:  # The tutorial's `Augment` layer: one coin per example, shared by image and mask.
    flip = tf.random.stateless_uniform([tf.shape(image)[0]], flip_key) < 0.5
    image = tf.where(flip[:, None, None, None], tf.reverse(image, axis=[2]), image)
    mask = tf.where(flip[:, None, None], tf.reverse(mask, axis=[2]), mask)
  if augment.color:
    image = _random_brightness_contrast(image, colour_key, augment.brightness, augment.contrast)
  return {**batch, "image": image, "mask": mask}


def _train_dataset(
  data_config: ml_collections.ConfigDict,
  global_batch_size: int,
  seed: int,
  start_step: int,
  process_index: int,
  process_count: int,
) -> tf.data.Dataset:
  local_batch_size = _local_batch_size(global_batch_size, process_count)
  shard = _open_shard(data_config, data_config.train_split, process_index, process_count)
  steps_per_epoch = _steps_per_epoch(data_config, shard.shard_sizes, global_batch_size)
  size = data_config.image_size
  examples = shard.examples.map(functools.partial(_resize, image_size=size), num_parallel_calls=tf.data.AUTOTUNE)
  if data_config.cache:
    examples = examples.cache()

  def epoch_batches(epoch: tf.Tensor) -> tf.data.Dataset:
    # A full-range int64 drawn from (seed, epoch): a different, reproducible order every epoch.
    epoch_seed = tf.random.stateless_uniform(
      [], tf.stack([tf.constant(seed, tf.int64), epoch]), None, None, dtype=tf.int64
    )
    shuffled = examples.shuffle(data_config.shuffle_buffer, seed=epoch_seed)
    return _with_padding(shuffled, steps_per_epoch * local_batch_size, size, size).batch(local_batch_size)

  first_epoch, steps_into_epoch = divmod(start_step, steps_per_epoch)
  batches = tf.data.Dataset.range(first_epoch, _FOREVER).flat_map(epoch_batches).skip(steps_into_epoch)

  def augment(step: tf.Tensor, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    key = tf.random.experimental.stateless_fold_in(tf.stack([tf.constant(seed, tf.int64), step]), process_index)
    return _normalize(_augment(batch, key, data_config.augment), data_config.normalization)

  return (
    batches.enumerate(start=start_step).map(augment, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
  )


def train_batches(
  data_config: ml_collections.ConfigDict,
  *,
  global_batch_size: int,
  seed: int,
  start_step: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's slice of every global batch, shuffled and augmented, forever.

  An epoch is `steps_per_epoch` steps: with `data.drop_remainder` the partial batch is dropped; without, it is padded
  with weight-0 rows. The stream is a function of (seed, step) alone, so `start_step` resumes it exactly.

  Args:
    data_config: the config's `data` block.
    global_batch_size: examples per step over all processes (divisible by the process count).
    seed: shuffles and augments; start_step: the first step's batch (a resumed run's step).
    process_index, process_count: this process's shard; default: JAX's.

  Returns:
    An iterator of {"image": float32 [B, S, S, 3], "mask": int32 [B, S, S], "weight": float32 [B]}, B the global
    batch size over the process count.
  """
  _check_config(data_config)
  process_index, process_count = _processes(process_index, process_count)
  if start_step < 0:
    raise ValueError(f"start_step={start_step} must be >= 0.")
  dataset = _train_dataset(data_config, global_batch_size, seed, start_step, process_index, process_count)
  return iter(tfds.as_numpy(dataset))


def eval_dataset(
  data_config: ml_collections.ConfigDict,
  *,
  global_batch_size: int,
  split: str | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> tf.data.Dataset:
  """This process's batches of one pass over `split` (default `eval_split`), the last one padded; see `eval_batches`.

  A dataset rather than an iterator so that an evaluator builds it once and reads it at every evaluation: with
  `data.cache` the split is decoded on the first pass and read from memory after.
  """
  _check_config(data_config)
  process_index, process_count = _processes(process_index, process_count)
  local_batch_size = _local_batch_size(global_batch_size, process_count)
  shard = _open_shard(data_config, data_config.eval_split if split is None else split, process_index, process_count)
  size, mask_size = data_config.image_size, data_config.eval_mask_size or data_config.image_size
  examples = shard.examples.map(
    functools.partial(_resize, image_size=size, mask_size=mask_size), num_parallel_calls=tf.data.AUTOTUNE
  )
  if data_config.cache:
    examples = examples.cache()
  # Every process pads to the largest shard, so all yield the same number of batches.
  num_batches = -(-max(shard.shard_sizes) // local_batch_size)
  batches = (
    _with_padding(examples, num_batches * local_batch_size, size, mask_size)
    .batch(local_batch_size)
    .map(functools.partial(_normalize, normalization=data_config.normalization), num_parallel_calls=tf.data.AUTOTUNE)
  )
  return batches.prefetch(tf.data.AUTOTUNE)


def eval_batches(
  data_config: ml_collections.ConfigDict,
  *,
  global_batch_size: int,
  split: str | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """One pass over every example of `split` exactly once, this process's shard; the last batch padded.

  Args:
    data_config: the config's `data` block.
    global_batch_size: examples per batch over all processes.
    split: a split or tfds slice (default `data.eval_split`).
    process_index, process_count: this process's shard; default: JAX's. Every process yields as many batches.

  Returns:
    An iterator of {"image", "mask", "weight"} as `train_batches`, unaugmented; "weight" is 1.0 for a real example
    and 0.0 for padding, and masks are `data.eval_mask_size` when set.
  """
  return iter(
    tfds.as_numpy(
      eval_dataset(
        data_config,
        global_batch_size=global_batch_size,
        split=split,
        process_index=process_index,
        process_count=process_count,
      )
    )
  )
