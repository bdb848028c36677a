"""tfds datasets with the `oxford_iiit_pet` features (`oxford_iiit_pet`, the offline `synthetic_pets`)."""

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

from unet_jax import errors
from unet_jax.data import synthetic_pets
from unet_jax.data.source import DatasetNotFoundError, Shard

OFFLINE_DATASET = synthetic_pets.SyntheticPets.name  # Built on first use: it needs no download.


def _builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The prepared builder; never downloads (a missing real dataset is an error that says how to prepare it)."""
  try:
    builder = tfds.builder(data_config.name, data_dir=data_config.data_dir or None)
  except tfds.core.registered.DatasetNotFoundError:
    raise errors.ConfigError(
      f"config.data.name={data_config.name!r} is neither 'folder' nor a tfds dataset. Use 'oxford_iiit_pet', "
      f"'{OFFLINE_DATASET}' (offline), 'folder' (your own images and masks) or another tfds name."
    ) from None
  if builder.is_prepared():
    return builder
  if builder.name == OFFLINE_DATASET:
    try:
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except OSError:  # Another process (a pytest worker, a host) finished preparing it first, so moving this
      # process's copy onto theirs failed (EEXIST or ENOTEMPTY, by timing): use theirs.
      builder = tfds.builder(data_config.name, data_dir=data_config.data_dir or None)
      if not builder.is_prepared():
        raise
    return builder
  raise DatasetNotFoundError(
    f"tfds dataset {data_config.name!r} is not prepared in {builder.data_dir} "
    f"(config.data.data_dir={data_config.data_dir!r}; '' means tfds' default, ~/tensorflow_datasets or "
    f"$TFDS_DATA_DIR), and training never downloads it. Where there is a network, prepare it once with "
    f"`tfds build {data_config.name} --data_dir=DIR` (oxford_iiit_pet: about 800 MB) and pass "
    f"--config.data.data_dir=DIR. Without a network, `--config configs/synthetic.py` trains on the offline "
    f"'{OFFLINE_DATASET}' dataset that ships in the package."
  )


def _split_info(builder: tfds.core.DatasetBuilder, split) -> tfds.core.SplitInfo:
  try:
    return builder.info.splits[split]
  except (KeyError, ValueError) as e:
    raise errors.ConfigError(
      f"{e} Set --config.data.train_split / --config.data.eval_split to an existing split "
      f"(tfds slicing like 'train[:90%]' works too)."
    ) from None


def num_examples(data_config: ml_collections.ConfigDict, split: str) -> int:
  return _split_info(_builder(data_config), split).num_examples


def open_shard(data_config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int) -> Shard:
  builder = _builder(data_config)
  process_splits = [
    tfds.split_for_jax_process(split, process_index=i, process_count=process_count) for i in range(process_count)
  ]
  shard_sizes = tuple(_split_info(builder, s).num_examples for s in process_splits)
  examples = builder.as_dataset(split=process_splits[process_index], shuffle_files=False)
  # Trimap values {1 object, 2 background, 3 border} -> class ids {0, 1, 2}, as in the TF tutorial.
  examples = examples.map(
    lambda ex: {"image": ex["image"], "mask": ex["segmentation_mask"] - 1}, num_parallel_calls=tf.data.AUTOTUNE
  )
  return Shard(examples=examples, shard_sizes=shard_sizes)
