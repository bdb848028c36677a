"""Evaluation of a checkpoint: the trainer's own eval figures, the best checkpoint, data overrides, table and JSON."""

import json
import math

import numpy as np
import pytest

from inference_testlib import trained  # noqa: F401  (a fixture)
from train_testlib import synthetic_data_dir  # noqa: F401  (a fixture)
from unet_jax import evaluate

METRICS = ("loss", "pixel_accuracy", "mean_iou", "iou_per_class", "dice_per_class")
TEST_EXAMPLES, TRAIN_EXAMPLES = 24, 64  # synthetic_pets/tiny.


def assert_same_metrics(got: dict, want: dict) -> None:
  for name in METRICS:
    np.testing.assert_allclose(np.asarray(got[name], float), np.asarray(want[name], float), rtol=1e-6,
                               err_msg=name)


def test_metrics_equal_the_trainers_eval_of_that_checkpoint(trained):  # noqa: F811
  got = evaluate.evaluate_checkpoint(str(trained.workdir), checkpoint="latest")
  step = max(trained.eval_metrics)
  assert (got["step"], got["split"]) == (step, "test")
  assert_same_metrics(got, trained.eval_metrics[step])
  confusion = np.asarray(got["confusion_matrix"])
  size = trained.config.data.image_size
  assert confusion.shape == (3, 3) and confusion.sum() == TEST_EXAMPLES * size * size  # Padding left out.
  assert got["pixel_accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())


def test_best_is_the_checkpoint_with_the_highest_mean_iou(trained):  # noqa: F811
  best = max(trained.eval_metrics, key=lambda step: trained.eval_metrics[step]["mean_iou"])
  got = evaluate.evaluate_checkpoint(str(trained.workdir), checkpoint="best")
  assert got["step"] == best
  assert_same_metrics(got, trained.eval_metrics[best])


def test_data_overrides_pick_another_split(trained):  # noqa: F811
  got = evaluate.evaluate_checkpoint(str(trained.workdir), overrides={"data.eval_split": "train"})
  size = trained.config.data.image_size
  assert got["split"] == "train"
  assert np.asarray(got["confusion_matrix"]).sum() == TRAIN_EXAMPLES * size * size


def test_only_data_and_batch_size_may_change(trained):  # noqa: F811
  with pytest.raises(ValueError, match=r"--config.model.alpha cannot change .* Only --config.data.\*"):
    evaluate.config_with_overrides(trained.config, {"data.eval_split": "train", "model.alpha": 1.0})


def test_json_has_null_for_an_absent_class():
  text = evaluate.to_json({"step": 3, "iou_per_class": [0.5, math.nan], "confusion_matrix": [[1, 0], [0, 0]]})
  assert json.loads(text) == {"step": 3, "iou_per_class": [0.5, None], "confusion_matrix": [[1, 0], [0, 0]]}
