"""Segmentation losses, per example so that train (mean) and eval (padding-weighted sum) reduce them alike."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, class_weights: Sequence[float] = ()) -> jax.Array:
  """Softmax cross-entropy per example [N], the mean over its pixels.

  `class_weights` (one per class, empty for uniform) weight each pixel by its true class, as the tutorial's
  `add_sample_weights` does; like Keras' sample weights the mean still divides by the pixel count.
  """
  # One-hot targets rather than integer labels: the gradient of a gather is a scatter, slow to compile and run.
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  per_pixel = optax.softmax_cross_entropy(logits.astype(jnp.float32), one_hot)
  if len(class_weights):
    per_pixel = per_pixel * jnp.asarray(class_weights, jnp.float32)[labels]
  return per_pixel.reshape(per_pixel.shape[0], -1).mean(axis=1)


def dice_loss(logits: jax.Array, labels: jax.Array, smooth: float = 1.0) -> jax.Array:
  """Soft Dice loss per example [N]: 1 - the mean over classes of 2|P∩Y| / (|P| + |Y|) on softmax probabilities."""
  num_classes = logits.shape[-1]
  probabilities = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  spatial_axes = tuple(range(1, logits.ndim - 1))
  intersection = (probabilities * one_hot).sum(axis=spatial_axes)
  sizes = probabilities.sum(axis=spatial_axes) + one_hot.sum(axis=spatial_axes)
  return 1.0 - ((2.0 * intersection + smooth) / (sizes + smooth)).mean(axis=-1)


def segmentation_loss(
  logits: jax.Array, labels: jax.Array, *, class_weights: Sequence[float] = (), dice_weight: float = 0.0
) -> jax.Array:
  """Per-example loss [N]: cross-entropy plus `dice_weight` times the Dice loss."""
  loss = cross_entropy(logits, labels, class_weights)
  if dice_weight:
    loss = loss + dice_weight * dice_loss(logits, labels)
  return loss
