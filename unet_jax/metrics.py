"""Segmentation metrics from one confusion matrix.

Eval sums a confusion matrix over every batch, device and process, then derives all metrics from it once:
averaging per-batch IoUs instead would weight small batches (the padded last one) wrongly.
"""

import jax
import jax.numpy as jnp
import numpy as np


def confusion_matrix(
  labels: jax.Array, predictions: jax.Array, num_classes: int, weights: jax.Array | None = None
) -> jax.Array:
  """int32 [num_classes, num_classes] counts, rows = true class, columns = predicted class.

  Args:
    labels, predictions: int [N, H, W].
    weights: optional [N] per-example weights (eval padding has weight 0). A pixel counts when its example's
      weight is positive.
  """
  counts = jnp.ones(labels.shape, jnp.int32)
  if weights is not None:
    counts = counts * (weights > 0).astype(jnp.int32).reshape((-1,) + (1,) * (labels.ndim - 1))
  # Scatter-add stays exact in int32 (a float32 one-hot matmul loses counts past 2**24 pixels).
  return jnp.zeros((num_classes, num_classes), jnp.int32).at[labels, predictions].add(counts, mode="drop")


def segmentation_metrics(confusion: np.ndarray) -> dict[str, float | list[float]]:
  """Pixel accuracy, per-class IoU and Dice, mean IoU from a [C, C] confusion matrix (rows true, columns predicted).

  A class absent from both labels and predictions has an undefined IoU/Dice: it is reported as NaN and left out of
  `mean_iou` (Keras' MeanIoU does the same).
  """
  confusion = np.asarray(confusion, np.float64)
  true_positives = np.diag(confusion)
  true_totals = confusion.sum(axis=1)
  predicted_totals = confusion.sum(axis=0)
  union = true_totals + predicted_totals - true_positives
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = np.where(union > 0, true_positives / union, np.nan)
    dice = np.where(union > 0, 2 * true_positives / (true_totals + predicted_totals), np.nan)
    pixel_accuracy = true_positives.sum() / confusion.sum() if confusion.sum() > 0 else np.nan
  present = ~np.isnan(iou)
  return {
    "pixel_accuracy": float(pixel_accuracy),
    "mean_iou": float(iou[present].mean()) if present.any() else float("nan"),
    "iou_per_class": [float(x) for x in iou],
    "dice_per_class": [float(x) for x in dice],
  }
