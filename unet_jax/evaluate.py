"""Full metrics of a checkpoint: `python -m unet_jax.evaluate --workdir DIR [--checkpoint latest|best|STEP]`.

Runs the trainer's own `evaluation.Evaluator` (confusion matrix over the whole split, padding excluded), so the
figures equal the ones the training run logged for that checkpoint. The run's config comes from the workdir;
`--config.data.*` (another split, data_dir, ...), `--config.batch_size` and the test-time augmentation
(`--config.eval_flip_average`, `--config.eval_scales`) may change for this evaluation only (`OVERRIDABLE_PREFIXES`).
Prints a table and writes the metrics as JSON to workdir/evaluation/step_XXXXXX_<split>.json (`--json` prints the
JSON instead of the table). An evaluation with overrides records them in its JSON and names the file after them
(step_XXXXXX_<split>_<hash of the overrides>.json), so evaluations with other test-time settings do not overwrite
each other.
"""

import hashlib
import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags
from etils import epath
from ml_collections import config_flags

from unet_jax import checkpointing, cli, data, default_config, distributed, errors, evaluation, paths

EVALUATION_DIR = "evaluation"
# The fields an evaluation may change: which examples it reads and how many at once, never the model.
OVERRIDABLE_PREFIXES = ("data.", "batch_size", "eval_flip_average", "eval_scales")


def config_with_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """`config` with flat `overrides` ({"data.eval_split": "train"}) applied; only data.* and batch_size may change."""
  refused = sorted(key for key in overrides if not key.startswith(OVERRIDABLE_PREFIXES))
  if refused:
    raise errors.ConfigError(
      f"--config.{refused[0]} cannot change for an evaluation: the model and training settings are the run's. Only "
      f"--config.data.*, --config.batch_size and the test-time augmentation (--config.eval_flip_average, "
      f"--config.eval_scales) can (e.g. --config.data.eval_split=train)."
    )
  config = ml_collections.ConfigDict(config.to_dict())
  config.update_from_flattened_dict(dict(overrides))
  return config


def evaluate_checkpoint(
  workdir: str, checkpoint: str | int = "latest", overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
  """The trainer's eval metrics of one checkpoint, plus its step, split and confusion matrix."""
  config = None
  if overrides:
    checkpointing.check_workdir(workdir)
    config = config_with_overrides(checkpointing.load_config(workdir), overrides)
  run = checkpointing.load_run(workdir, checkpoint, config)
  data.check_global_batch_size(run.config.batch_size)
  metrics = evaluation.Evaluator(run.config, run.model, run.mesh).run(run.state).metrics
  return {
    "step": run.step,
    "split": run.config.data.eval_split,
    "dataset": run.config.data.name,
    "overrides": dict(overrides or {}),
    **metrics,
  }


def _json_safe(value: Any) -> Any:
  """NaN (a class absent from labels and predictions) -> null: JSON has no NaN."""
  if isinstance(value, float) and math.isnan(value):
    return None
  if isinstance(value, (list, tuple)):
    return [_json_safe(item) for item in value]
  if isinstance(value, Mapping):
    return {key: _json_safe(item) for key, item in value.items()}
  return value


def to_json(metrics: Mapping[str, Any]) -> str:
  return json.dumps({key: _json_safe(value) for key, value in metrics.items()}, indent=2)


def format_table(metrics: Mapping[str, Any]) -> str:
  confusion = np.asarray(metrics["confusion_matrix"], np.int64)
  classes = range(len(confusion))
  overrides = "".join(f", {key}={value}" for key, value in sorted(metrics["overrides"].items()))
  lines = [
    f"Step {metrics['step']}, split {metrics['split']!r} of {metrics['dataset']!r}{overrides}",
    f"  loss            {metrics['loss']:.4f}",
    f"  pixel accuracy  {metrics['pixel_accuracy']:.4f}",
    f"  mean IoU        {metrics['mean_iou']:.4f}",
    "",
    "  class       IoU    Dice  pixels (true)",
  ]
  for index in classes:
    lines.append(
      f"  {index:>5}  {metrics['iou_per_class'][index]:>8.4f}  {metrics['dice_per_class'][index]:>6.4f}"
      f"  {confusion[index].sum():>13,}"
    )
  width = max(len(f"{count:,}") for count in confusion.reshape(-1).tolist() + [0])
  lines += [
    "",
    "  Confusion matrix (pixels; rows: true class, columns: predicted class)",
    "  true\\pred " + " ".join(f"{index:>{width}}" for index in classes),
  ]
  for index in classes:
    lines.append(f"  {index:>9} " + " ".join(f"{count:>{width},}" for count in confusion[index]))
  return "\n".join(lines)


def write_json(workdir: str, metrics: Mapping[str, Any]) -> epath.Path:
  """Writes workdir/evaluation/step_XXXXXX_<split>[_<hash of the overrides>].json and returns its path."""
  split = str(metrics["split"]).replace("/", "_").replace(":", "_")  # tfds slices like "test[:50%]" stay a file name.
  name = f"step_{metrics['step']:06d}_{split}"
  if metrics["overrides"]:
    overrides = json.dumps(_json_safe(metrics["overrides"]), sort_keys=True)
    name += "_" + hashlib.sha256(overrides.encode()).hexdigest()[:8]
  path = epath.Path(workdir) / EVALUATION_DIR / f"{name}.json"
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(to_json(metrics))
  return path


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; options go as --flag=value.")
  options = flags.FLAGS
  workdir = paths.resolve(options.workdir)
  checkpointing.check_workdir(workdir)
  cli.use_compilation_cache(checkpointing.load_config(workdir).compilation_cache_dir)  # Before joining, as train.
  distributed.initialize()
  overrides = {
    field: cli.resolve_path_field(field, value)
    for field, value in config_flags.get_override_values(options["config"]).items()
  }
  metrics = evaluate_checkpoint(workdir, options.checkpoint, overrides)
  if jax.process_index() != 0:
    return
  path = write_json(workdir, metrics)
  print(to_json(metrics) if options.json else f"{format_table(metrics)}\n\nWrote {path}")


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The training run's --workdir.")
  flags.DEFINE_string(
    "checkpoint", "latest", f"Which checkpoint: {checkpointing.CHECKPOINT_CHOICES} (by eval mean IoU)."
  )
  flags.DEFINE_bool("json", False, "Print the metrics as JSON instead of the table.")
  # The defaults only define which fields exist; the run's own config.json supplies the values. The flag applies its
  # --config.* overrides as it is defined: an unknown field is a one-line error before ml_collections' KeyError.
  fields = default_config.get_config()
  cli.check_overrides(fields, sys.argv)
  config_flags.DEFINE_config_dict(
    "config",
    fields,
    "Changes to the run's config for this evaluation: "
    "--config.data.*, --config.batch_size, --config.eval_flip_average and "
    "--config.eval_scales only.",
    lock_config=True,
  )
  flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
  cli.run(main, name="evaluate", define_flags=_define_flags)
