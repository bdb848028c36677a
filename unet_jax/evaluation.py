"""Evaluation over a whole split: one object per run, built once, run on any state.

An `Evaluator` holds what does not change between evaluations (the jitted eval step and the split's tf.data
pipeline, whose `data.cache` keeps the decoded examples in memory after the first pass); `run(state)` returns the
metrics and the rows of the prediction figure. The trainer, `python -m unet_jax.evaluate` and the experiments all
evaluate through it, so their figures agree.
"""

import dataclasses
import functools
from typing import Any

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from unet_jax import data, errors, losses, metrics, sharding, visualize
from unet_jax.models.unet import inference_logits
from unet_jax.train_state import TrainState


def eval_step(
  state: TrainState,
  batch: dict[str, jax.Array],
  *,
  model,
  num_classes: int,
  class_weights: tuple[float, ...],
  dice_weight: float,
  flip_average: bool,
  scales: tuple[float, ...],
) -> dict[str, jax.Array]:
  """Sums over the batch (padding weighted out), so that eval can add them up over the whole split; and the
  predicted masks, left sharded like the batch (only the figure's few rows are ever fetched). Logits are resized
  (bilinearly) to the masks' size when `data.eval_mask_size` differs from the input size."""
  logits = inference_logits(
    model, {"params": state.params, "batch_stats": state.batch_stats}, batch["image"], flip_average, scales
  )
  if logits.shape[1:3] != batch["mask"].shape[1:3]:
    logits = jax.image.resize(logits, batch["mask"].shape + logits.shape[-1:], "linear")
  loss = losses.segmentation_loss(logits, batch["mask"], class_weights=class_weights, dice_weight=dice_weight)
  predictions = logits.argmax(-1)
  return {
    "loss_sum": (loss * batch["weight"]).sum(),
    "weight_sum": batch["weight"].sum(),
    "confusion": metrics.confusion_matrix(batch["mask"], predictions, num_classes, batch["weight"]),
    "predictions": predictions,
  }


def make_eval_fn(config: ml_collections.ConfigDict, model, mesh: jax.sharding.Mesh):
  """The jitted `eval_step`: state replicated, batch split over the data axis, the sums replicated."""
  replicated, batch_sharded = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  return jax.jit(
    functools.partial(
      eval_step,
      model=model,
      num_classes=config.model.num_classes,
      class_weights=tuple(config.class_weights),
      dice_weight=config.dice_weight,
      flip_average=config.eval_flip_average,
      scales=tuple(config.eval_scales),
    ),
    in_shardings=(replicated, batch_sharded),
    out_shardings={
      "loss_sum": replicated,
      "weight_sum": replicated,
      "confusion": replicated,
      "predictions": batch_sharded,
    },
  )


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """What one evaluation gives: the split's metrics, and the first real examples for the prediction figure."""

  metrics: dict[str, Any]  # loss, pixel_accuracy, mean_iou, iou/dice per class, confusion_matrix (rows: true class).
  examples: dict[str, np.ndarray]  # "image" (as fed to the model), "mask", "predictions" of this process's first rows.


class Evaluator:
  """The eval split's metrics from one confusion matrix summed over every batch, padding excluded.

  Args:
    config: the run's config (`data.*`, `batch_size`, the test-time augmentation and `num_prediction_examples`).
    model: the U-Net the states belong to.
    mesh: the mesh the states are replicated on; each batch is split over its data axis.
  """

  def __init__(self, config: ml_collections.ConfigDict, model, mesh: jax.sharding.Mesh):
    self.config, self.mesh = config, mesh
    self._step = make_eval_fn(config, model, mesh)
    self._dataset = data.eval_dataset(config.data, global_batch_size=config.batch_size)

  def run(self, state: TrainState) -> EvalResult:
    """Evaluates `state` (replicated on the mesh) on the whole split.

    Returns:
      The metrics, and the first `num_prediction_examples` real examples of this process's first batch with their
      predicted masks.
    """
    num_classes = self.config.model.num_classes
    confusion = np.zeros((num_classes, num_classes), np.int64)
    loss_sum = weight_sum = 0.0
    examples = None
    for batch in tfds.as_numpy(self._dataset):
      outputs = self._step(state, sharding.shard_batch(batch, self.mesh))
      if examples is None:
        rows = np.flatnonzero(batch["weight"] > 0)[: self.config.num_prediction_examples]
        predictions = sharding.local_rows(outputs["predictions"], self.mesh)
        examples = {"image": batch["image"][rows], "mask": batch["mask"][rows], "predictions": predictions[rows]}
      sums = jax.device_get({name: outputs[name] for name in ("confusion", "loss_sum", "weight_sum")})
      confusion += sums["confusion"]
      loss_sum += float(sums["loss_sum"])
      weight_sum += float(sums["weight_sum"])
    if examples is None:
      raise errors.ConfigError(
        f"The eval split {self.config.data.eval_split!r} of {self.config.data.name!r} holds no "
        f"examples; set --config.data.eval_split to a split that has some."
      )
    return EvalResult(
      {
        "loss": loss_sum / weight_sum,
        **metrics.segmentation_metrics(confusion),
        "confusion_matrix": confusion.tolist(),
      },
      examples,
    )


def write_predictions(result: EvalResult, config: ml_collections.ConfigDict, path: str) -> None:
  """The tutorial's show_predictions on fixed examples: the first real ones of the eval split (process 0 only)."""
  if jax.process_index() != 0:
    return
  examples = result.examples
  visualize.save_predictions(
    path,
    visualize.to_display_range(examples["image"], config.data.normalization),
    examples["mask"],
    examples["predictions"],
    config.model.num_classes,
  )
