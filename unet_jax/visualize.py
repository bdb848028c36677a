"""The tutorial's `display()` as a file: one row per example, Input Image | True Mask | Predicted Mask."""

import io

import numpy as np
from etils import epath
from matplotlib import figure as mpl_figure

TITLES = ("Input Image", "True Mask", "Predicted Mask")


def to_display_range(images: np.ndarray, normalization: str) -> np.ndarray:
  """Model inputs back to [0, 1] RGB for display (`config.data.normalization` says how they were scaled)."""
  images = np.asarray(images, np.float32)
  if normalization == "minus_one_to_one":
    images = (images + 1.0) / 2.0
  return np.clip(images, 0.0, 1.0)


def save_predictions(
  path: str, images: np.ndarray, true_masks: np.ndarray, predicted_masks: np.ndarray, num_classes: int
) -> None:
  """Writes a PNG grid; `images` already in [0, 1], masks class ids [N, H, W] drawn with one colour per class."""
  rows = len(images)
  # A bare Figure renders PNG with Agg without pyplot: no global figure registry, no backend to choose (servers,
  # TPU VMs and CI have no display), nothing to close.
  figure = mpl_figure.Figure(figsize=(9, 3 * rows))
  axes = figure.subplots(rows, 3, squeeze=False)
  for row in range(rows):
    for column, (title, picture) in enumerate(zip(TITLES, (images[row], true_masks[row], predicted_masks[row]))):
      axis = axes[row, column]
      if picture.ndim == 2:
        axis.imshow(picture, vmin=0, vmax=max(num_classes - 1, 1), cmap="viridis", interpolation="nearest")
      else:
        axis.imshow(picture)
      axis.set_title(title)
      axis.axis("off")
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=72)
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(buffer.getvalue())  # Through epath so that gs:// workdirs work too.
