"""Images in and masks out for inference: any file PIL reads becomes uint8 RGB; masks become palette PNGs.

Every input goes through `to_rgb` so that a file, a numpy array from the Python API and a frame from a camera end up
as the same thing: uint8 [H, W, 3], the way the training pipeline decodes its images (alpha dropped, grayscale
replicated to 3 channels for the ImageNet encoder).

Memory stays bounded whatever the file: `read_image` returns at most `MAX_PIXELS` pixels, reading a larger image
downscaled (aspect ratio kept, JPEG decoded at 1/2..1/8 scale where it can) and logging a warning with both sizes.
The model resizes every image to its own input size anyway, so nothing it sees is lost; `upscale_mask` brings a mask
back to the file's size as nearest-neighbour class ids. A larger file still decodes whole once (4 bytes a pixel)
before it shrinks, up to PIL's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`, ~89 MP, is a warning, which a
downscaled read replaces with its own; twice that, ~179 MP or ~0.7 GB decoded, is an `ImageReadError`). An animation
or multi-page file gives its first frame, with a warning.
"""

import math
import pathlib
import warnings
from collections.abc import Iterable, Sequence

import matplotlib
import numpy as np
from absl import logging
from PIL import ExifTags, Image, ImageOps

from unet_jax import errors

# PIL modes that hold more than 8 bits per sample: 16-bit PNG/TIFF grayscale opens as one of these.
_WIDE_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_UINT16_TO_UINT8 = 257  # 65535 / 255: maps the full 16-bit range onto the full 8-bit range.
# Modes that PIL resamples as they are; any other (palette, alpha, CMYK, 1-bit) becomes RGB before it is downscaled,
# as `_pil_to_rgb` would make it anyway (RGBA would be resampled premultiplied, changing the colours under low alpha).
_RESAMPLED_MODES = ("RGB", "L", "F", *_WIDE_INTEGER_MODES)

# EXIF orientation -> the transpose that shows the image upright, as `ImageOps.exif_transpose` applies it.
_ORIENTATION_TRANSPOSE = {
  2: Image.Transpose.FLIP_LEFT_RIGHT,
  3: Image.Transpose.ROTATE_180,
  4: Image.Transpose.FLIP_TOP_BOTTOM,
  5: Image.Transpose.TRANSPOSE,
  6: Image.Transpose.ROTATE_270,
  7: Image.Transpose.TRANSVERSE,
  8: Image.Transpose.ROTATE_90,
}

# 16.8 MP (4096 x 4096): above a 12 MP phone photo and a 4K frame, which are read whole. Predicting a file of this size
# takes ~0.6 GB beyond the program's own (measured, 3 classes; most of it the float32 logits resized to the image, 4
# bytes a pixel and class), as does a 10000 x 10000 PNG read downscaled to it, which took 5.8 GB at full size.
MAX_PIXELS = 4096 * 4096
_OVERLAY_BLOCK_PIXELS = 1 << 20  # The overlay blends ~1 MP at a time: its float32 temporaries stay at ~12 MB each.


class ImageReadError(errors.UserError, ValueError):
  """A file that is not a readable image; the message names the file and why."""


def to_rgb(image: np.ndarray) -> np.ndarray:
  """An image array -> uint8 [H, W, 3].

  Accepts [H, W], [H, W, 1] (grayscale, replicated), [H, W, 3] and [H, W, 4] (alpha dropped, as tf.io.decode_png
  with channels=3 does); uint8 as is, uint16 scaled from 0..65535, bool, and floats in [0, 1].
  """
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
    image = image[..., :3] if image.shape[-1] != 1 else image[..., 0]
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"Expected an image shaped [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]; got shape {image.shape}.")
  if min(image.shape[:2]) == 0:
    raise ValueError(f"The image is empty (shape {image.shape}).")
  if image.dtype == np.uint8:
    return image
  if image.dtype == np.uint16:
    return (image // _UINT16_TO_UINT8).astype(np.uint8)
  if image.dtype == np.bool_:
    return image.astype(np.uint8) * 255
  if np.issubdtype(image.dtype, np.floating):
    low, high = float(np.min(image)), float(np.max(image))
    if not (0.0 <= low and high <= 1.0):
      raise ValueError(
        f"A float image must hold values in [0, 1]; this one spans [{low:g}, {high:g}]. Pass uint8 "
        f"(0..255) or divide by the maximum first."
      )
    return np.round(image * 255.0).astype(np.uint8)
  raise ValueError(f"Unsupported image dtype {image.dtype}; pass uint8, uint16, bool or float in [0, 1].")


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
  if image.mode in _WIDE_INTEGER_MODES:  # PIL's convert("RGB") would clip these to 0..255 instead of scaling.
    return to_rgb(np.clip(np.asarray(image), 0, 65535).astype(np.uint16))
  return to_rgb(np.asarray(image.convert("RGB")))


def bounded_size(height: int, width: int, max_pixels: float) -> tuple[int, int]:
  """(height, width) scaled to at most `max_pixels` pixels, aspect ratio kept (but each side at least 1)."""
  if height * width <= max_pixels:
    return height, width
  scale = math.sqrt(max_pixels / (height * width))
  new_height, new_width = max(1, math.floor(height * scale)), max(1, math.floor(width * scale))
  if new_height * new_width > max_pixels:  # A side rounded up to 1: the other takes what is left.
    if new_height > new_width:
      new_height = max(1, int(max_pixels // new_width))
    else:
      new_width = max(1, int(max_pixels // new_height))
  return new_height, new_width


def read_image(path: str | pathlib.Path, max_pixels: float | None = None) -> np.ndarray:
  """uint8 [H, W, 3] of any image file PIL reads, upright as its EXIF orientation says (phone photos).

  An image over `max_pixels` is read downscaled to fit it, with a warning. None: `MAX_PIXELS` as it is when called
  (a program may change it, as it may PIL's `Image.MAX_IMAGE_PIXELS`); `math.inf`: no limit.
  """
  return read_image_and_size(path, max_pixels)[0]


def read_image_and_size(
  path: str | pathlib.Path, max_pixels: float | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
  """`read_image`'s array and the (height, width) of the file's upright image, which it exceeds if downscaled."""
  max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
  try:
    with warnings.catch_warnings():
      _quiet_bomb_warning(max_pixels)
      with Image.open(path) as image:
        frames = getattr(image, "n_frames", 1)
        # MPO: a camera JPEG whose extra frames are previews, gain maps or stereo views of the first.
        if frames > 1 and image.format != "MPO":
          logging.warning(
            "%s holds %d frames (an animation or a multi-page file): predicting its first frame of %d; "
            "save the others as separate images to predict them.",
            path,
            frames,
            frames,
          )
        width, height = image.size
        if height * width <= max_pixels:
          image.load()  # PIL reads lazily: a truncated file fails here, inside the try.
          rgb = _pil_to_rgb(ImageOps.exif_transpose(image))
          return rgb, rgb.shape[:2]
        return _read_downscaled(path, image, height, width, max_pixels)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
    hint = ""
    if isinstance(error, Image.DecompressionBombError):
      hint = (
        " (PIL's decompression-bomb guard: downscale the file first, or raise PIL.Image.MAX_IMAGE_PIXELS if "
        "you trust it)"
      )
    raise ImageReadError(f"Cannot read {path} as an image: {error}{hint}") from error


def _quiet_bomb_warning(max_pixels: float) -> None:
  """Silences PIL's DecompressionBombWarning (inside a `catch_warnings`) when any image it fires for is downscaled,
  and so gets a warning of its own."""
  limit = Image.MAX_IMAGE_PIXELS
  if limit is None or max_pixels <= limit:
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def _read_downscaled(
  path: str | pathlib.Path, image: Image.Image, height: int, width: int, max_pixels: float
) -> tuple[np.ndarray, tuple[int, int]]:
  target_height, target_width = bounded_size(height, width, max_pixels)
  image.draft(None, (target_width, target_height))  # JPEG: decodes at the coarsest scale still >= the target.
  image.load()
  reduced = image if image.mode in _RESAMPLED_MODES else image.convert("RGB")
  reduced = reduced.resize((target_width, target_height), Image.Resampling.BILINEAR, reducing_gap=2.0)
  # The file's own orientation (exif_transpose of the resized copy would miss a TIFF's, which PIL reads from the file).
  transpose = _ORIENTATION_TRANSPOSE.get(image.getexif().get(ExifTags.Base.Orientation, 1))
  rgb = _pil_to_rgb(reduced if transpose is None else reduced.transpose(transpose))
  turned = transpose in (
    Image.Transpose.TRANSPOSE,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
  )
  original = (width, height) if turned else (height, width)
  logging.warning(
    "%s is %dx%d = %s pixels, over the limit of %s (unet_jax.image_io.MAX_PIXELS): read downscaled to "
    "%dx%d, aspect ratio kept.",
    path,
    original[1],
    original[0],
    f"{height * width:,}",
    f"{int(max_pixels):,}",
    rgb.shape[1],
    rgb.shape[0],
  )
  return rgb, original


def upscale_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """`mask` [h, w] resized to `size` = (H, W) by nearest neighbour (class ids stay ids), in `mask`'s dtype."""
  height, width = mask.shape
  rows = ((np.arange(size[0]) + 0.5) * (height / size[0])).astype(np.intp)
  columns = ((np.arange(size[1]) + 0.5) * (width / size[1])).astype(np.intp)
  return mask[rows[:, None], columns[None, :]]


def image_extensions() -> frozenset[str]:
  """File extensions PIL can open (".png", ".jpg", ...): what a directory search picks up."""
  return frozenset(
    extension for extension, format_name in Image.registered_extensions().items() if format_name in Image.OPEN
  )


def find_images(paths: Sequence[str | pathlib.Path]) -> list[tuple[pathlib.Path, pathlib.Path]]:
  """(file, output name relative to the output folder without suffix) for each image under `paths`.

  A file is taken whatever its extension (so that a broken one gets reported); a directory contributes, recursively
  and sorted, the files with an image extension, keeping their sub-folders in the output name. A path that does not
  exist is an error.
  """
  missing = [str(path) for path in paths if not pathlib.Path(path).exists()]
  if missing:
    raise errors.InputNotFoundError(f"These input paths do not exist: {', '.join(missing)}; check their spelling.")
  extensions = image_extensions()
  found = []
  for path in map(pathlib.Path, paths):
    if path.is_dir():
      found += [
        (file, file.relative_to(path).with_suffix(""))
        for file in sorted(path.rglob("*"))
        if file.is_file() and file.suffix.lower() in extensions
      ]
    else:
      found.append((path, pathlib.Path(path.stem)))
  return found


def check_unique_names(names: Iterable[tuple[pathlib.Path, pathlib.Path]]) -> None:
  """Two inputs writing the same output (a.jpg and a.png, or one file given twice) is an error before any work."""
  seen: dict[pathlib.Path, pathlib.Path] = {}
  for file, name in names:
    if name in seen:
      raise errors.ConfigError(
        f"{seen[name]} and {file} would both write outputs named {name}: rename one of "
        f"them or predict them in separate runs."
      )
    seen[name] = file


def palette(num_classes: int) -> np.ndarray:
  """uint8 [num_classes, 3]: the colours the trainer's prediction figures use (viridis over the class ids)."""
  if not 1 <= num_classes <= 256:
    raise errors.ConfigError(f"A palette PNG holds 1 to 256 classes; the model has {num_classes}.")
  colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 1.0, num_classes))[:, :3]
  return np.round(colors * 255).astype(np.uint8)


def save_mask(path: str | pathlib.Path, mask: np.ndarray, colors: np.ndarray) -> None:
  """A palette ("P") PNG whose pixel values are the class ids: viewers show colours, `np.asarray(Image.open())` ids."""
  image = Image.fromarray(np.asarray(mask, np.uint8))
  image.putpalette(colors.reshape(-1).tolist())  # Turns the "L" image into "P", the ids untouched.
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  image.save(path)


def overlay(image: np.ndarray, mask: np.ndarray, colors: np.ndarray, opacity: float = 0.5) -> np.ndarray:
  """uint8 [H, W, 3]: the image with each pixel's class colour blended over it (a block of rows at a time, so that the
  float32 temporaries stay small whatever the image's size)."""
  blended = np.empty(image.shape, np.uint8)
  rows = max(1, _OVERLAY_BLOCK_PIXELS // image.shape[1])
  for start in range(0, image.shape[0], rows):
    block = slice(start, start + rows)
    blended[block] = np.round(
      (1.0 - opacity) * image[block].astype(np.float32) + opacity * colors[mask[block]].astype(np.float32)
    )
  return blended


def save_image(path: str | pathlib.Path, image: np.ndarray) -> None:
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image).save(path)
