"""Users' own data: `images/` and `masks/` folders matched by file stem.

Images may be JPEG, PNG, GIF, BMP, TIFF or WebP, RGB, RGBA (alpha dropped), palette or grayscale (replicated to 3
channels for the ImageNet encoder), 8- or 16-bit, whatever their extension says. They decode through
`unet_jax.image_io.read_image` (upright as their EXIF orientation says, 16 bits scaled to 8), so training sees the
pixels prediction will. Masks are single-channel or palette images of raw values that `mask_value_map` turns into
class ids, e.g. "1:0,2:1,3:2" for pet trimaps or "0:0,255:1" for binary masks ("" keeps the raw values as class ids).

Before anything is read into the pipeline, every pair is decoded and checked once per process: image and mask
decode in full (so a truncated file fails here, not at some batch inside tf.data), same size, mask values inside the
map. A bad pair is an error naming the file, or a logged skip with `skip_bad_files=True`, so the split sizes (and
hence steps per epoch and eval padding) are known up front.
"""

import concurrent.futures
import dataclasses
import functools
import os
import pathlib

import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image, ImageOps

from unet_jax import errors, image_io
from unet_jax.data.source import DatasetNotFoundError, Shard

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp"})
SPLITS = ("train", "test", "all")


@dataclasses.dataclass(frozen=True)
class Pair:
  stem: str
  image: str
  mask: str


class BadFileError(errors.UserError, ValueError):
  """An image or mask that cannot be used; the message names the file and the fix."""


def parse_value_map(text: str) -> dict[int, int]:
  """ "1:0, 2:1, 3:2" (braces allowed) -> {1: 0, 2: 1, 3: 2}; "" -> {} (raw values are the class ids).

  A string because ConfigDict keys must be strings and `--config.data.folder.mask_value_map=1:0,2:1` must work.
  """
  value_map = {}
  for item in text.strip().strip("{}").split(","):
    if not item.strip():
      continue
    try:
      raw, class_id = (int(part) for part in item.split(":"))
    except ValueError:
      raise errors.ConfigError(
        f"config.data.folder.mask_value_map={text!r}: {item.strip()!r} is not 'raw:class'. "
        "Write it like '1:0,2:1,3:2' (pet trimaps) or '0:0,255:1' (binary masks)."
      ) from None
    if raw in value_map or not 0 <= class_id <= 255:
      raise errors.ConfigError(
        f"config.data.folder.mask_value_map={text!r}: raw value {raw} is mapped twice or class "
        f"id {class_id} is outside 0..255; map each raw value once, to a class id in 0..255."
      )
    value_map[raw] = class_id
  return value_map


def _mask_values(mask: Image.Image, path: str) -> np.ndarray:
  """The raw values of a mask: palette indices for palette images, not their colours."""
  array = np.asarray(mask)
  if array.ndim == 3:  # A grayscale mask saved as RGB(A) is fine; a colour-coded one is not.
    if not (array[..., :3] == array[..., :1]).all():
      raise BadFileError(
        f"mask {path} is a colour image (mode {mask.mode}); save masks as single-channel or "
        "palette images of class ids."
      )
    array = array[..., 0]
  if array.dtype == bool:
    array = array.astype(np.uint8)
  if array.min(initial=0) < 0:
    raise BadFileError(f"mask {path} has negative values; masks hold non-negative class ids.")
  return array


def _lookup_table(value_map: dict[int, int], max_raw: int = 255) -> np.ndarray:
  """raw value -> class id; the identity when the map is empty."""
  table = np.arange(max(max_raw, *value_map, 0) + 1).astype(np.uint8)
  for raw, class_id in value_map.items():
    table[raw] = class_id
  return table


def _read_image(path: str) -> np.ndarray:
  """uint8 [H, W, 3], decoded as `unet_jax.predict` decodes its inputs, but always at full size: the mask must match."""
  try:
    return image_io.read_image(path, max_pixels=None)
  except image_io.ImageReadError as e:
    raise BadFileError(f"cannot read image {path}: {e.__cause__ or e}") from None


def _read_mask(path: str) -> np.ndarray:
  """The mask's raw values [H, W], decoded in full and turned upright like its image."""
  try:
    with Image.open(path) as mask:
      mask.load()  # PIL reads lazily: a truncated file fails here, inside the try.
      upright = ImageOps.exif_transpose(mask)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise BadFileError(f"cannot read mask {path}: {e}") from None
  return _mask_values(upright, path)


def _check_pair(pair: Pair, value_map: dict[int, int]) -> None:
  """Raises BadFileError naming the file unless the pair decodes to a usable example.

  Decodes both files in full, as `_load_pair` will: a header alone does not show a truncated file.
  """
  height, width = _read_image(pair.image).shape[:2]
  raw = _read_mask(pair.mask)
  values = np.flatnonzero(np.bincount(raw.ravel()))  # Faster than np.unique.
  if (height, width) != raw.shape:
    raise BadFileError(
      f"image {pair.image} is {width}x{height} but its mask {pair.mask} is "
      f"{raw.shape[1]}x{raw.shape[0]}; they must be the same size (sizes as shown upright, after "
      "any EXIF orientation)."
    )
  if value_map:
    outside = sorted(set(values.tolist()) - set(value_map))
    if outside:
      raise BadFileError(
        f"mask {pair.mask} has values {outside} outside mask_value_map {value_map}; map them in "
        "--config.data.folder.mask_value_map or fix the mask."
      )
  elif values.max(initial=0) > 255:
    raise BadFileError(
      f"mask {pair.mask} has values up to {values.max()}; map them to class ids 0..255 with "
      "--config.data.folder.mask_value_map."
    )


def _files_by_stem(directory: pathlib.Path) -> dict[str, pathlib.Path]:
  files = {}
  for path in sorted(directory.iterdir()):
    if path.suffix.lower() in IMAGE_EXTENSIONS:
      if path.stem in files:
        raise errors.ConfigError(
          f"{files[path.stem].name} and {path.name} in {directory} share the stem "
          f"{path.stem!r}; images and masks are matched by stem, so keep one."
        )
      files[path.stem] = path
  return files


def _directory(folder_config: ml_collections.ConfigDict, name: str) -> pathlib.Path:
  if not folder_config.root:
    raise errors.ConfigError(
      "config.data.name='folder' needs --config.data.folder.root=DIR, the folder that holds "
      f"{folder_config.images!r} and {folder_config.masks!r}."
    )
  directory = pathlib.Path(folder_config.root) / folder_config[name]
  if not directory.is_dir():
    raise DatasetNotFoundError(
      f"{directory} (config.data.folder.root / config.data.folder.{name}) is not a "
      "directory; point the config at your data."
    )
  return directory


@functools.lru_cache(maxsize=8)
def _scan(
  images_dir: pathlib.Path, masks_dir: pathlib.Path, value_map_text: str, skip_bad_files: bool
) -> tuple[Pair, ...]:
  """All usable pairs, sorted by stem. Cached: the folder is scanned once per process."""
  masks = _files_by_stem(masks_dir)
  value_map = parse_value_map(value_map_text)
  pairs, problems = [], []
  for stem, image in _files_by_stem(images_dir).items():
    if stem in masks:
      pairs.append(Pair(stem, str(image), str(masks[stem])))
    else:
      problems.append(f"image {image} has no mask named {stem}.* in {masks_dir}")

  def check(pair: Pair) -> str | None:
    try:
      _check_pair(pair, value_map)
    except BadFileError as e:
      return str(e)
    return None

  with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # Pillow releases the GIL.
    verdicts = list(pool.map(check, pairs))
  problems += [verdict for verdict in verdicts if verdict]
  if problems and not skip_bad_files:
    raise BadFileError(
      f"{len(problems)} bad file(s) in {images_dir.parent}: "
      + "; ".join(problem.rstrip(".") for problem in problems[:5])
      + ". Fix them, or set --config.data.folder.skip_bad_files=True to skip them."
    )
  for problem in problems:
    logging.warning("Skipping: %s", problem)
  usable = tuple(pair for pair, verdict in zip(pairs, verdicts) if not verdict)
  if not usable:
    raise DatasetNotFoundError(
      f"no usable image/mask pairs in {images_dir} and {masks_dir} (matched by file stem); "
      "put images and their masks there, or point config.data.folder.root at your data."
    )
  return usable


def _read_list(path: pathlib.Path) -> list[str]:
  """Stems from a list file: the first token of each line (the Oxford-IIIT Pet `trainval.txt` format)."""
  if not path.is_file():
    raise DatasetNotFoundError(f"split list {path} does not exist; fix config.data.folder.train_list/test_list.")
  return [line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def split_pairs(data_config: ml_collections.ConfigDict, split: str) -> tuple[Pair, ...]:
  """The pairs of `split` ("train", "test" or "all"), sorted by stem.

  With list files, each named split is its list (a split without a list is every pair the other list leaves out);
  without, a fraction `test_fraction` of the stems, drawn with `split_seed`, is the test split.
  """
  folder_config = data_config.folder
  if split not in SPLITS:
    raise errors.ConfigError(f"split {split!r} does not exist for config.data.name='folder'; use one of {SPLITS}.")
  pairs = _scan(
    _directory(folder_config, "images"),
    _directory(folder_config, "masks"),
    folder_config.mask_value_map,
    folder_config.skip_bad_files,
  )
  if split == "all":
    return pairs
  by_stem = {pair.stem: pair for pair in pairs}
  lists = {name: folder_config[f"{name}_list"] for name in ("train", "test")}
  if any(lists.values()):
    stems = {}
    for name, list_file in lists.items():
      if list_file:
        path = pathlib.Path(folder_config.root) / list_file
        listed = _read_list(path)
        missing = [stem for stem in listed if stem not in by_stem]
        if missing and not folder_config.skip_bad_files:
          raise errors.ConfigError(
            f"{len(missing)} stem(s) of {path} have no usable image/mask pair, e.g. "
            f"{missing[:5]}; fix the list or set --config.data.folder.skip_bad_files=True."
          )
        if missing:
          logging.warning("Skipping %d stem(s) of %s without a usable pair: %s", len(missing), path, missing[:5])
        stems[name] = [stem for stem in listed if stem in by_stem]
    other = "test" if split == "train" else "train"
    if split in stems:
      chosen = stems[split]
    else:
      chosen = [stem for stem in by_stem if stem not in set(stems[other])]
    return tuple(by_stem[stem] for stem in sorted(set(chosen)))
  order = np.random.default_rng(folder_config.split_seed).permutation(len(pairs))
  num_test = int(round(len(pairs) * folder_config.test_fraction))
  chosen = order[:num_test] if split == "test" else order[num_test:]
  return tuple(pairs[i] for i in sorted(chosen))


def num_examples(data_config: ml_collections.ConfigDict, split: str) -> int:
  return len(split_pairs(data_config, split))


def _load_pair(image_path: bytes, mask_path: bytes, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Decodes as `_check_pair` did; a file changed since the scan still fails with its name."""
  return _read_image(image_path.decode()), table[_read_mask(mask_path.decode())][..., None]


def open_shard(data_config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int) -> Shard:
  pairs = split_pairs(data_config, split)
  shards = np.array_split(np.arange(len(pairs)), process_count)  # Contiguous, the first ones one longer (as tfds).
  mine = [pairs[i] for i in shards[process_index]]
  table = _lookup_table(parse_value_map(data_config.folder.mask_value_map))

  def load(image_path, mask_path):
    image, mask = tf.numpy_function(
      functools.partial(_load_pair, table=table), [image_path, mask_path], [tf.uint8, tf.uint8]
    )
    return {"image": tf.ensure_shape(image, [None, None, 3]), "mask": tf.ensure_shape(mask, [None, None, 1])}

  paths = tf.data.Dataset.from_tensor_slices(
    (tf.constant([p.image for p in mine], tf.string), tf.constant([p.mask for p in mine], tf.string))
  )
  examples = paths.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return Shard(examples=examples, shard_sizes=tuple(len(shard) for shard in shards))
