"""Confusion matrix and the metrics derived from it, against numpy written independently."""

import numpy as np
import pytest

from unet_jax import metrics


def _numpy_confusion(labels, predictions, num_classes, weights):
  confusion = np.zeros((num_classes, num_classes), np.int64)
  for example in np.flatnonzero(weights > 0):
    np.add.at(confusion, (labels[example].ravel(), predictions[example].ravel()), 1)
  return confusion


def test_confusion_matrix_matches_numpy_and_ignores_padding():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, (5, 8, 8)).astype(np.int32)
  predictions = rng.integers(0, 3, (5, 8, 8)).astype(np.int32)
  weights = np.array([1, 1, 1, 0, 0], np.float32)  # The last two are eval padding.
  # Padding rows hold junk that would dominate the counts if they leaked in.
  labels[3:], predictions[3:] = 0, 2

  got = np.asarray(metrics.confusion_matrix(labels, predictions, 3, weights))
  np.testing.assert_array_equal(got, _numpy_confusion(labels, predictions, 3, weights))
  assert got.sum() == 3 * 8 * 8
  np.testing.assert_array_equal(
    np.asarray(metrics.confusion_matrix(labels, predictions, 3)), _numpy_confusion(labels, predictions, 3, np.ones(5))
  )


def test_metrics_of_a_known_confusion_matrix():
  # Rows true, columns predicted.
  confusion = np.array(
    [[50, 10, 0], [5, 35, 0], [0, 0, 0]]
  )  # Class 2 neither occurs nor is predicted: undefined, left out of the mean.
  got = metrics.segmentation_metrics(confusion)
  iou_0 = 50 / (60 + 55 - 50)
  iou_1 = 35 / (40 + 45 - 35)
  assert got["pixel_accuracy"] == pytest.approx(85 / 100)
  np.testing.assert_allclose(got["iou_per_class"][:2], [iou_0, iou_1])
  assert np.isnan(got["iou_per_class"][2]) and np.isnan(got["dice_per_class"][2])
  assert got["mean_iou"] == pytest.approx((iou_0 + iou_1) / 2)
  np.testing.assert_allclose(got["dice_per_class"][:2], [2 * 50 / (60 + 55), 2 * 35 / (40 + 45)])


def test_perfect_and_disjoint_predictions():
  perfect = metrics.segmentation_metrics(np.diag([7, 3, 5]))
  assert perfect["mean_iou"] == 1.0 and perfect["pixel_accuracy"] == 1.0 and perfect["dice_per_class"] == [1.0] * 3
  # Every pixel of class 0 predicted as 1 and vice versa: IoU 0 for both, not undefined.
  swapped = metrics.segmentation_metrics(np.array([[0, 4], [6, 0]]))
  assert swapped["iou_per_class"] == [0.0, 0.0] and swapped["mean_iou"] == 0.0
