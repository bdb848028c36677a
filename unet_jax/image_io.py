"""Images in and masks out for inference: any file PIL reads becomes uint8 RGB; masks become palette PNGs.

Every input goes through `to_rgb` so that a file, a numpy array from the Python API and a frame from a camera end up
as the same thing: uint8 [H, W, 3], the way the training pipeline decodes its images (alpha dropped, grayscale
replicated to 3 channels for the ImageNet encoder).
"""

import pathlib
from collections.abc import Iterable, Sequence

import matplotlib
import numpy as np
from PIL import Image, ImageOps

# PIL modes that hold more than 8 bits per sample: 16-bit PNG/TIFF grayscale opens as one of these.
_WIDE_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_UINT16_TO_UINT8 = 257  # 65535 / 255: maps the full 16-bit range onto the full 8-bit range.


class ImageReadError(ValueError):
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
      raise ValueError(f"A float image must hold values in [0, 1]; this one spans [{low:g}, {high:g}]. Pass uint8 "
                       f"(0..255) or divide by the maximum first.")
    return np.round(image * 255.0).astype(np.uint8)
  raise ValueError(f"Unsupported image dtype {image.dtype}; pass uint8, uint16, bool or float in [0, 1].")


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
  if image.mode in _WIDE_INTEGER_MODES:  # PIL's convert("RGB") would clip these to 0..255 instead of scaling.
    return to_rgb(np.clip(np.asarray(image), 0, 65535).astype(np.uint16))
  return to_rgb(np.asarray(image.convert("RGB")))


def read_image(path: str | pathlib.Path) -> np.ndarray:
  """uint8 [H, W, 3] of any image file PIL reads, upright as its EXIF orientation says (phone photos)."""
  try:
    with Image.open(path) as image:
      image.load()  # PIL reads lazily: a truncated file fails here, inside the try.
      return _pil_to_rgb(ImageOps.exif_transpose(image))
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
    raise ImageReadError(f"Cannot read {path} as an image: {error}") from error


def image_extensions() -> frozenset[str]:
  """File extensions PIL can open (".png", ".jpg", ...): what a directory search picks up."""
  return frozenset(extension for extension, format_name in Image.registered_extensions().items()
                   if format_name in Image.OPEN)


def find_images(paths: Sequence[str | pathlib.Path]) -> list[tuple[pathlib.Path, pathlib.Path]]:
  """(file, output name relative to the output folder without suffix) for each image under `paths`.

  A file is taken whatever its extension (so that a broken one gets reported); a directory contributes, recursively
  and sorted, the files with an image extension, keeping their sub-folders in the output name. A path that does not
  exist is an error.
  """
  missing = [str(path) for path in paths if not pathlib.Path(path).exists()]
  if missing:
    raise FileNotFoundError(f"These input paths do not exist: {', '.join(missing)}.")
  extensions = image_extensions()
  found = []
  for path in map(pathlib.Path, paths):
    if path.is_dir():
      found += [(file, file.relative_to(path).with_suffix("")) for file in sorted(path.rglob("*"))
                if file.is_file() and file.suffix.lower() in extensions]
    else:
      found.append((path, pathlib.Path(path.stem)))
  return found


def check_unique_names(names: Iterable[tuple[pathlib.Path, pathlib.Path]]) -> None:
  """Two inputs writing the same output (a.jpg and a.png, or one file given twice) is an error before any work."""
  seen: dict[pathlib.Path, pathlib.Path] = {}
  for file, name in names:
    if name in seen:
      raise ValueError(f"{seen[name]} and {file} would both write outputs named {name}: rename one of them or "
                       f"predict them in separate runs.")
    seen[name] = file


def palette(num_classes: int) -> np.ndarray:
  """uint8 [num_classes, 3]: the colours the trainer's prediction figures use (viridis over the class ids)."""
  if not 1 <= num_classes <= 256:
    raise ValueError(f"A palette PNG holds 1 to 256 classes; the model has {num_classes}.")
  colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 1.0, num_classes))[:, :3]
  return np.round(colors * 255).astype(np.uint8)


def save_mask(path: str | pathlib.Path, mask: np.ndarray, colors: np.ndarray) -> None:
  """A palette ("P") PNG whose pixel values are the class ids: viewers show colours, `np.asarray(Image.open())` ids."""
  image = Image.fromarray(np.asarray(mask, np.uint8))
  image.putpalette(colors.reshape(-1).tolist())  # Turns the "L" image into "P", the ids untouched.
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  image.save(path)


def overlay(image: np.ndarray, mask: np.ndarray, colors: np.ndarray, opacity: float = 0.5) -> np.ndarray:
  """uint8 [H, W, 3]: the image with each pixel's class colour blended over it."""
  blended = (1.0 - opacity) * image.astype(np.float32) + opacity * colors[mask].astype(np.float32)
  return np.round(blended).astype(np.uint8)


def save_image(path: str | pathlib.Path, image: np.ndarray) -> None:
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image).save(path)
