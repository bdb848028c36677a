"""`synthetic_pets`: an offline stand-in for `oxford_iiit_pet`, generated procedurally in seconds.

Same features and trimap convention as `oxford_iiit_pet` (image uint8 HxWx3 of varying size, segmentation_mask
uint8 HxWx1 with 1 object / 2 background / 3 border, label, file_name), so every code path that reads the real
data runs on it without a network. Each example is drawn from a numpy RNG seeded by (split, index): the dataset
is the same on every machine and for every build.

What makes it a fair task rather than a colour threshold: objects are smooth random blobs (sums of rotated
Gaussian bumps with a wobbly level set, sometimes two of them), their colour is often close to the background's,
and what separates them is fine texture (stripes, spots, checks, fur) and rim shading; the background has its own
coarse blotches, an illumination ramp and flat distractor patches; objects vary in size, are often cut by the
image edge, and everything gets pixel noise and JPEG artefacts. The border class is the band where the object
fades into the background, 3.5-5% of the image side wide (4-6 px at the tutorial's 128 px), like the pet trimaps.
"""

import dataclasses
import functools
import io
import math

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

TEXTURES = ("stripes", "spots", "checks", "fur")  # The `label` feature: which texture the object wears.
_SPLIT_SEEDS = {"train": 0, "test": 1}
_VERSION_SEED = 20240501  # Changing the generator means a new VERSION and a new seed.


@dataclasses.dataclass(eq=False)
class SyntheticPetsConfig(tfds.core.BuilderConfig):
  num_train: int = 2000
  num_test: int = 500
  min_side: int = 96  # Image heights and widths are drawn independently from [min_side, max_side].
  max_side: int = 200


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float, channels: int = 1) -> np.ndarray:
  """Value noise in about [-1, 1] with features about `cell` px wide: a coarse random grid, upsampled bicubically.

  The grid is 8-bit so that Pillow's fast RGB/L resampling does the upsampling (float planes are much slower).
  """
  h, w = shape
  grid = rng.integers(0, 256, (int(h / cell) + 2, int(w / cell) + 2, channels), dtype=np.uint8)
  upsampled = Image.fromarray(grid.squeeze(-1) if channels == 1 else grid).resize((w, h), Image.Resampling.BICUBIC)
  return np.asarray(upsampled, dtype=np.float32) / 127.5 - 1


@functools.cache
def _gaussian_pool(size: int) -> np.ndarray:
  """A fixed pool of standard normal samples; examples take random windows of it (drawing afresh is slower)."""
  return np.random.default_rng(0).standard_normal(size, dtype=np.float32)


def _pixel_noise(rng: np.random.Generator, shape: tuple[int, ...], max_size: int) -> np.ndarray:
  pool = _gaussian_pool(2 * max_size)
  size = math.prod(shape)
  start = rng.integers(0, len(pool) - size)
  return pool[start : start + size].reshape(shape)


def _blob_field(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, scale: float) -> np.ndarray:
  """A smooth random blob on the grid of column `y` [H, 1] and row `x` [1, W]: positive inside, 0 on the outline."""
  h, w = y.shape[0], x.shape[1]
  # Centres anywhere but the very edge: objects are often, not always, cut by the image edge.
  cy, cx = rng.uniform(0.05, 0.95) * h, rng.uniform(0.05, 0.95) * w
  field = np.full((h, w), -0.5, np.float32)
  for _ in range(rng.integers(2, 6)):  # A sum of rotated anisotropic Gaussian bumps around the centre.
    oy, ox = rng.normal(0.0, 0.5 * scale, 2).tolist()
    a, b = (scale * rng.uniform(0.35, 0.9, 2)).tolist()
    angle = rng.uniform(0, np.pi)
    c, s = math.cos(angle), math.sin(angle)
    dy, dx = y - (cy + oy), x - (cx + ox)
    # ((dx c + dy s) / a)^2 + ((dy c - dx s) / b)^2 expanded, so only one product is image-sized.
    quadratic = (
      (c * c / a**2 + s * s / b**2) * dx**2
      + (s * s / a**2 + c * c / b**2) * dy**2
      + (2 * c * s * (1 / a**2 - 1 / b**2) * dy) * dx
    )
    field += np.exp(-0.5 * quadratic)
  return field + 0.08 * _smooth_noise(rng, (h, w), cell=max(scale / 2, 4))  # A wobbly outline.


def _texture(rng: np.random.Generator, kind: str, y: np.ndarray, x: np.ndarray) -> np.ndarray:
  """A luminance pattern in about [-1, 1], finer than the background's blotches."""
  angle = rng.uniform(0, np.pi)
  c, s = math.cos(angle), math.sin(angle)
  if kind == "stripes":
    frequency = 2 * np.pi / rng.uniform(5, 10)
    return np.sin(x * (frequency * c) + y * (frequency * s))
  if kind == "checks":
    frequency = 2 * np.pi / rng.uniform(6, 12)
    return np.sign(
      np.sin(x * (frequency * c) + y * (frequency * s)) * np.sin(y * (frequency * c) - x * (frequency * s))
    )
  shape = (y.shape[0], x.shape[1])
  if kind == "spots":
    return np.where(_smooth_noise(rng, shape, cell=rng.uniform(3, 6)) > 0.3, np.float32(1), np.float32(-0.3))
  return _smooth_noise(rng, shape, cell=2)  # "fur"


def _background(rng: np.random.Generator, y: np.ndarray, x: np.ndarray, colour: np.ndarray) -> np.ndarray:
  """Coarse colour blotches, an illumination ramp and flat distractor patches (discs and boxes)."""
  h, w = y.shape[0], x.shape[1]
  ramp = rng.uniform(-40, 40) * (y / h - 0.5) + rng.uniform(-40, 40) * (x / w - 0.5)
  image = 35 * _smooth_noise(rng, (h, w), cell=rng.uniform(16, 48), channels=3) + (colour + ramp[..., None])
  for _ in range(rng.integers(0, 4)):
    py, px = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = (rng.uniform(0.05, 0.2, 2) * (h, w)).tolist()
    rows, cols = slice(max(int(py - ry) - 1, 0), int(py + ry) + 2), slice(max(int(px - rx) - 1, 0), int(px + rx) + 2)
    dy, dx = (y[rows] - py) / ry, (x[:, cols] - px) / rx
    if rng.random() < 0.5:
      inside = 1 - np.sqrt(dy**2 + dx**2)
    else:
      inside = np.minimum(1 - np.abs(dy), 1 - np.abs(dx))
    alpha = np.clip(inside * min(ry, rx) + 0.5, 0, 1)[..., None]
    patch = image[rows, cols]
    image[rows, cols] = patch + (rng.uniform(20, 235, 3).astype(np.float32) - patch) * alpha
  return image


def draw_example(rng: np.random.Generator, min_side: int, max_side: int) -> tuple[np.ndarray, np.ndarray, int]:
  """Returns (image uint8 [H, W, 3], trimap uint8 [H, W, 1] in {1 object, 2 background, 3 border}, label)."""
  h, w = rng.integers(min_side, max_side + 1, size=2).tolist()
  y, x = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
  while True:  # Redraw until the object covers a sensible part of the image.
    scale = rng.uniform(0.15, 0.35) * min(h, w)
    field = _blob_field(rng, y, x, scale)
    if rng.random() < 0.2:  # Sometimes two objects, like two pets in one photo.
      field = np.maximum(field, _blob_field(rng, y, x, scale * rng.uniform(0.6, 1.0)))
    if 0.08 < np.mean(field > 0) < 0.7:
      break
  # First-order signed distance to the outline in px (positive inside): border bands of even width.
  gy, gx = np.gradient(field)
  distance = field / (np.sqrt(gy**2 + gx**2) + 1e-6)
  # The border band is 3.5-5% of the image side wide, like the pet trimaps' (median ~3.7%: ~5 px at 128 px).
  half_width = rng.uniform(0.0175, 0.025) * (h + w) / 2
  border = np.abs(distance) <= half_width
  trimap = np.where(border, 3, np.where(distance > 0, 1, 2)).astype(np.uint8)

  background_colour = rng.uniform(20, 235, 3).astype(np.float32)
  if rng.random() < 0.35:  # Often camouflaged: the object's colour close to the background's.
    object_colour = background_colour + rng.normal(0, 25, 3).astype(np.float32)
  else:
    object_colour = rng.uniform(20, 235, 3).astype(np.float32)
  label = int(rng.integers(len(TEXTURES)))
  contrast = rng.uniform(30, 60) * rng.choice((-1.0, 1.0)).item()
  shading = 0.7 + 0.3 * np.clip(distance / (0.5 * scale), 0, 1)  # Darker towards the rim.
  obj = (
    20 * _smooth_noise(rng, (h, w), cell=rng.uniform(8, 16), channels=3)
    + (object_colour + contrast * _texture(rng, TEXTURES[label], y, x)[..., None])
  ) * shading[..., None]
  # A soft edge: the object fades into the background across the band, like fur, which is why annotators left
  # that band unclassified.
  alpha = np.clip(distance / (2 * half_width) + 0.5, 0, 1)[..., None]
  image = _background(rng, y, x, background_colour)
  image += (obj - image) * alpha
  image *= (1 - 0.3 * np.clip(1 - np.abs(distance) / half_width, 0, 1))[..., None]  # A soft shadow along the outline.
  image += rng.uniform(2, 10) * _pixel_noise(rng, image.shape, max_size=3 * max_side**2)
  return np.clip(image, 0, 255).astype(np.uint8), trimap[..., None], label


def _encode(array: np.ndarray, fmt: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array.squeeze()).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
  return buffer.getvalue()


class SyntheticPets(tfds.core.GeneratorBasedBuilder):
  """Procedural pet-like segmentation data with the `oxford_iiit_pet` features; builds offline in seconds."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
    SyntheticPetsConfig(name="default", description="2,000 train / 500 test images of 96-200 px sides."),
    SyntheticPetsConfig(
      name="tiny",
      description="64 train / 24 test images of 40-72 px sides, for tests.",
      num_train=64,
      num_test=24,
      min_side=40,
      max_side=72,
    ),
  ]
  DEFAULT_CONFIG_NAME = "default"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=__doc__,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(names=TEXTURES),
          "file_name": tfds.features.Text(),
          "segmentation_mask": tfds.features.Image(shape=(None, None, 1), use_colormap=True),
        }
      ),
      supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    return {
      "train": self._generate_examples("train", config.num_train),
      "test": self._generate_examples("test", config.num_test),
    }

  def _generate_examples(self, split: str, num_examples: int):
    config = self.builder_config
    for index in range(num_examples):
      rng = np.random.default_rng([_VERSION_SEED, _SPLIT_SEEDS[split], index])
      image, trimap, label = draw_example(rng, config.min_side, config.max_side)
      file_name = f"{split}_{index:05d}.jpg"
      yield (
        file_name,
        {
          "image": _encode(image, "JPEG"),
          "label": label,
          "file_name": file_name,
          "segmentation_mask": _encode(trimap, "PNG"),
        },
      )
