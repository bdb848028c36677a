"""Evaluation of a checkpoint: the trainer's own eval figures, the best checkpoint, data overrides, table and JSON."""

import json
import math
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from inference_testlib import trained  # noqa: F401  (a fixture)
from train_testlib import REPO_ROOT, synthetic_data_dir, trainer_env  # noqa: F401  (a fixture)

from unet_jax import checkpointing, data, evaluate, metrics
from unet_jax.models import unet

METRICS = ("loss", "pixel_accuracy", "mean_iou", "iou_per_class", "dice_per_class", "confusion_matrix")


def assert_same_metrics(got: dict, want: dict) -> None:
  for name in METRICS:
    np.testing.assert_allclose(np.asarray(got[name], float), np.asarray(want[name], float), rtol=1e-6, err_msg=name)


def test_metrics_equal_the_trainers_eval_of_that_checkpoint(trained):  # noqa: F811
  got = evaluate.evaluate_checkpoint(str(trained.workdir), checkpoint="latest")
  step = max(trained.eval_metrics)
  assert (got["step"], got["split"]) == (step, trained.config.data.eval_split)
  assert_same_metrics(got, trained.eval_metrics[step])
  confusion = np.asarray(got["confusion_matrix"])
  assert confusion.shape == (3, 3) and confusion.sum() == _pixels(trained.config, trained.config.data.eval_split)
  assert got["pixel_accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())


def test_best_is_the_checkpoint_with_the_highest_mean_iou(trained):  # noqa: F811
  best = max(trained.eval_metrics, key=lambda step: trained.eval_metrics[step]["mean_iou"])
  got = evaluate.evaluate_checkpoint(str(trained.workdir), checkpoint="best")
  assert got["step"] == best
  assert_same_metrics(got, trained.eval_metrics[best])


def test_latest_passes_over_an_unreadable_newest_checkpoint_and_a_named_one_is_an_error(trained, tmp_path, caplog):  # noqa: F811
  workdir = tmp_path / "run"
  shutil.copytree(trained.workdir, workdir)
  newest, before = sorted(trained.eval_metrics)[-1], sorted(trained.eval_metrics)[-2]
  for path in (workdir / "checkpoints" / str(newest)).rglob("*"):
    if path.is_file() and "ocdbt" in str(path):
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with caplog.at_level("WARNING"):
    got = evaluate.evaluate_checkpoint(str(workdir), checkpoint="latest")
  assert got["step"] == before and f"step {newest}" in caplog.text and "cannot be read" in caplog.text
  assert_same_metrics(got, trained.eval_metrics[before])
  assert (workdir / "checkpoints" / str(newest)).is_dir()  # A reader leaves the workdir as it is.
  with pytest.raises(checkpointing.CheckpointError, match=f"checkpoint of step {newest} in .* cannot be read"):
    evaluate.evaluate_checkpoint(str(workdir), checkpoint=str(newest))


def test_data_overrides_pick_another_split(trained):  # noqa: F811
  got = evaluate.evaluate_checkpoint(str(trained.workdir), overrides={"data.eval_split": "train"})
  assert got["split"] == "train"
  assert np.asarray(got["confusion_matrix"]).sum() == _pixels(trained.config, "train")


def _pixels(config, split: str) -> int:
  """Every pixel of every example of the split, once: what a confusion matrix without the padding counts."""
  return data.num_examples(config.data, split) * config.data.image_size**2


def test_test_time_augmented_evaluations_count_the_same_pixels_differently(trained):  # noqa: F811
  plain = evaluate.evaluate_checkpoint(str(trained.workdir))
  flipped = evaluate.evaluate_checkpoint(str(trained.workdir), overrides={"eval_flip_average": True})
  assert np.asarray(flipped["confusion_matrix"]).sum() == np.asarray(plain["confusion_matrix"]).sum()
  assert flipped["confusion_matrix"] != plain["confusion_matrix"]
  multi_scale = evaluate.evaluate_checkpoint(str(trained.workdir), overrides={"eval_scales": (0.5, 1.0)})
  assert np.asarray(multi_scale["confusion_matrix"]).sum() == np.asarray(plain["confusion_matrix"]).sum()
  assert multi_scale["confusion_matrix"] not in (plain["confusion_matrix"], flipped["confusion_matrix"])


def test_eval_mask_size_scores_resized_logits_on_smaller_masks(trained):  # noqa: F811
  size = trained.config.data.image_size // 2
  plain = evaluate.evaluate_checkpoint(str(trained.workdir))
  small = evaluate.evaluate_checkpoint(str(trained.workdir), overrides={"data.eval_mask_size": size})
  split = trained.config.data.eval_split
  assert np.asarray(small["confusion_matrix"]).sum() == data.num_examples(trained.config.data, split) * size**2
  assert small["confusion_matrix"] != plain["confusion_matrix"]
  # By hand: the full-size logits of every real example, resized to the masks, against the half-size masks.
  run = checkpointing.load_run(str(trained.workdir))
  config = evaluate.config_with_overrides(run.config, {"data.eval_mask_size": size})
  variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
  confusion = 0
  for batch in data.eval_batches(config.data, global_batch_size=config.batch_size):
    logits = unet.inference_logits(run.model, variables, batch["image"])
    logits = jax.image.resize(logits, batch["mask"].shape + (3,), "linear")
    confusion += np.asarray(metrics.confusion_matrix(batch["mask"], logits.argmax(-1), 3, batch["weight"]))
  np.testing.assert_array_equal(small["confusion_matrix"], confusion)


def test_only_data_and_batch_size_may_change(trained):  # noqa: F811
  with pytest.raises(ValueError, match=r"--config.model.alpha cannot change .* Only --config.data.\*"):
    evaluate.config_with_overrides(trained.config, {"data.eval_split": "train", "model.alpha": 1.0})


def test_json_has_null_for_an_absent_class():
  text = evaluate.to_json({"step": 3, "iou_per_class": [0.5, math.nan], "confusion_matrix": [[1, 0], [0, 0]]})
  assert json.loads(text) == {"step": 3, "iou_per_class": [0.5, None], "confusion_matrix": [[1, 0], [0, 0]]}


def test_evaluations_with_other_overrides_are_written_to_other_files(tmp_path):
  plain = {"step": 400, "split": "test", "overrides": {}, "mean_iou": 0.5}
  flip = {**plain, "overrides": {"eval_flip_average": True}, "mean_iou": 0.6}
  scales = {**plain, "overrides": {"eval_flip_average": True, "eval_scales": (0.75, 1.0)}, "mean_iou": 0.7}
  paths = [evaluate.write_json(str(tmp_path), metrics) for metrics in (plain, flip, scales)]
  assert paths[0].name == "step_000400_test.json" and len(set(paths)) == 3
  assert [json.loads(path.read_text())["mean_iou"] for path in paths] == [0.5, 0.6, 0.7]
  assert json.loads(paths[2].read_text())["overrides"] == {"eval_flip_average": True, "eval_scales": [0.75, 1.0]}
  again = evaluate.write_json(
    str(tmp_path), {**scales, "overrides": {"eval_scales": (0.75, 1.0), "eval_flip_average": True}}
  )
  assert again == paths[2]  # The same overrides in another order: the same file.


def test_cli_prints_the_table_and_writes_json(trained):  # noqa: F811
  step = min(trained.eval_metrics)
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "unet_jax.evaluate",
      f"--workdir={trained.workdir}",
      f"--checkpoint={step}",
      "--config.data.eval_split=test[:12]",
    ],
    env=trainer_env(),
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Step {step}, split 'test[:12]'" in result.stdout and "Confusion matrix" in result.stdout
  assert "data.eval_split=test[:12]" in result.stdout
  path = pathlib.Path(result.stdout.rsplit("Wrote ", 1)[1].strip())
  assert path.parent == trained.workdir / "evaluation"
  written = json.loads(path.read_text())
  assert (written["step"], written["split"]) == (step, "test[:12]")
  assert written["overrides"] == {"data.eval_split": "test[:12]"}
  assert np.asarray(written["confusion_matrix"]).sum() == _pixels(trained.config, "test[:12]")
