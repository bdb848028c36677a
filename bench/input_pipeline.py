"""Input pipeline throughput: images/s of the train stream, first epoch (decode + resize) and cached epochs.

Measures the offline `synthetic_pets` (its build time too, into a fresh data_dir unless --data_dir is given) and
the real images of pets_sample through the folder dataset, as configs/pets_sample.py reads them (its copy beside the
repository unless --pets_sample is given). One JSON line per measurement.

  python bench/input_pipeline.py [--image_size=128] [--batch_size=32] [--cached_epochs=2]
"""

import json
import os
import pathlib
import runpy
import tempfile
import time

import ml_collections
import tensorflow_datasets as tfds
from absl import app, flags

from unet_jax import data, default_config

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

_DATA_DIR = flags.DEFINE_string("data_dir", "", "tfds data_dir for synthetic_pets; '' builds into a fresh temp dir.")
_PETS_SAMPLE = flags.DEFINE_string(
  "pets_sample",
  "",
  "The Oxford-IIIT Pet sample folder; '' reads the copy beside "
  "the repository (configs/pets_sample.py:local). Skipped when absent.",
)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Training image size.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Global batch size.")
_CACHED_EPOCHS = flags.DEFINE_integer("cached_epochs", 2, "Epochs timed after the first (read from the cache).")


def report(**fields) -> None:
  print(json.dumps({**fields, "cpus": os.cpu_count()}), flush=True)


def time_train_stream(name: str, config: ml_collections.ConfigDict) -> None:
  steps_per_epoch = data.num_examples(config, config.train_split) // _BATCH_SIZE.value
  batches = data.train_batches(config, global_batch_size=_BATCH_SIZE.value, seed=0)
  common = {"dataset": name, "image_size": config.image_size, "batch_size": _BATCH_SIZE.value}
  for phase, epochs in (("first_epoch", 1), ("cached_epochs", _CACHED_EPOCHS.value)):
    start = time.perf_counter()
    for _ in range(epochs * steps_per_epoch):
      next(batches)
    seconds = time.perf_counter() - start
    images = epochs * steps_per_epoch * _BATCH_SIZE.value
    report(**common, phase=phase, images=images, seconds=round(seconds, 2), images_per_s=round(images / seconds, 1))


def main(argv: list[str]) -> None:
  del argv
  tfds.disable_progress_bar()
  data_dir = _DATA_DIR.value or tempfile.mkdtemp(prefix="tfds_")
  config = default_config.get_config().data
  config.name, config.data_dir, config.image_size = "synthetic_pets", data_dir, _IMAGE_SIZE.value
  start = time.perf_counter()
  examples = data.num_examples(config, "train") + data.num_examples(config, "test")  # Builds it if needed.
  report(
    dataset="synthetic_pets",
    phase="build" if not _DATA_DIR.value else "open",
    examples=examples,
    seconds=round(time.perf_counter() - start, 2),
  )
  time_train_stream("synthetic_pets", config)

  config = runpy.run_path(str(REPO_ROOT / "configs" / "pets_sample.py"))["get_config"]("local").data
  config.image_size = _IMAGE_SIZE.value
  config.drop_remainder = True  # Full batches only, so that images = steps x batch size.
  config.folder.root = _PETS_SAMPLE.value or config.folder.root
  if pathlib.Path(config.folder.root).is_dir():
    start = time.perf_counter()
    examples = data.num_examples(config, "train")  # The one-off check of every pair.
    report(dataset="pets_sample", phase="scan", examples=examples, seconds=round(time.perf_counter() - start, 2))
    time_train_stream("pets_sample", config)


if __name__ == "__main__":
  app.run(main)
