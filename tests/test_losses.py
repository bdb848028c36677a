"""Losses against a numpy log-softmax written out by hand."""

import numpy as np
import pytest

from unet_jax import losses


def _log_softmax(logits):
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  return rng.normal(size=(2, 4, 4, 3)).astype(np.float32), rng.integers(0, 3, (2, 4, 4)).astype(np.int32)


def test_cross_entropy_is_the_mean_negative_log_likelihood_per_example(batch):
  logits, labels = batch
  nll = -np.take_along_axis(_log_softmax(logits), labels[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), nll.mean(axis=(1, 2)), rtol=1e-5)


def test_class_weights_weight_pixels_by_their_true_class_and_keep_the_pixel_count(batch):
  logits, labels = batch
  weights = (1.0, 2.0, 3.0)
  nll = -np.take_along_axis(_log_softmax(logits), labels[..., None], axis=-1)[..., 0]
  expected = (nll * np.asarray(weights)[labels]).mean(axis=(1, 2))  # Keras divides by all pixels, not by the weights.
  np.testing.assert_allclose(losses.cross_entropy(logits, labels, weights), expected, rtol=1e-5)


def test_dice_loss_is_near_zero_for_confident_correct_logits_and_near_one_for_wrong(batch):
  _, labels = batch
  one_hot = np.eye(3, dtype=np.float32)[labels]
  assert np.all(np.asarray(losses.dice_loss(50 * one_hot, labels)) < 1e-3)
  assert np.all(np.asarray(losses.dice_loss(50 * np.roll(one_hot, 1, axis=-1), labels)) > 0.9)


def test_segmentation_loss_adds_the_weighted_dice_term(batch):
  logits, labels = batch
  combined = losses.segmentation_loss(logits, labels, dice_weight=0.5)
  expected = losses.cross_entropy(logits, labels) + 0.5 * losses.dice_loss(logits, labels)
  np.testing.assert_allclose(combined, expected, rtol=1e-6)
