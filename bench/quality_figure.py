"""The prediction figure of bench/quality.md: a run's model on the first test images of pets_sample.

Rows of Input Image | True Mask | Predicted Mask (the trainer's own figure, `visualize.save_predictions`) for the
first `--rows` examples of the official test list, read by the eval stream exactly as the evaluation reads them,
whatever split the run itself evaluated (a `:val` run's figures show validation images).

  python bench/quality_figure.py WORKDIR bench/quality_predictions.png [ROWS]
"""

import sys

import numpy as np

from unet_jax import checkpointing, data, evaluate, predict, visualize

TEST_LIST = {"data.folder.test_list": "annotations/test.txt", "data.eval_split": "test"}


def main(workdir: str, output: str, rows: int = 4) -> None:
  config = evaluate.config_with_overrides(checkpointing.load_config(workdir), TEST_LIST)
  run = predict.load_run(workdir, "latest", config)
  batch = next(data.eval_batches(config.data, global_batch_size=rows, process_index=0, process_count=1))
  images = visualize.to_display_range(batch["image"], config.data.normalization)  # [0, 1], as the figure shows them.
  variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
  logits = predict.model_logits(run.model, config.data.normalization, config.eval_flip_average,
                                tuple(config.eval_scales), variables, images * 255.0)
  visualize.save_predictions(output, images, batch["mask"], np.argmax(logits, -1), config.model.num_classes)
  print(f"Wrote {output}: the first {rows} test images, {workdir} at step {run.step}.")


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], *(int(arg) for arg in sys.argv[3:]))
