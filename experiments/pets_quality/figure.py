"""predictions.png here: a run's model on the first images of pets_sample's official test list.

Rows of Input Image | True Mask | Predicted Mask, the trainer's own figure (`evaluation.write_predictions`) of an
evaluation of the official test list by the trainer's `evaluation.Evaluator` (so scored as the trainer scores,
on the config's eval masks), whatever split the run itself evaluated (a `:val` run's own figures show validation
images). ROWS is at most the run's batch size.

  python experiments/pets_quality/figure.py WORKDIR experiments/pets_quality/predictions.png [ROWS]
"""

import sys

from unet_jax import checkpointing, evaluation

TEST_LIST = {"data.folder.test_list": "annotations/test.txt", "data.eval_split": "test"}


def main(workdir: str, output: str, rows: int = 4) -> None:
  config = checkpointing.load_config(workdir)
  config.update_from_flattened_dict({**TEST_LIST, "num_prediction_examples": rows})
  run = checkpointing.load_run(workdir, "latest", config)
  result = evaluation.Evaluator(run.config, run.model, run.mesh).run(run.state)
  evaluation.write_predictions(result, run.config, output)
  print(
    f"Wrote {output}: the first {rows} test images, {workdir} at step {run.step} "
    f"(test mean IoU {result.metrics['mean_iou']:.3f})."
  )


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], *(int(arg) for arg in sys.argv[3:]))
