"""Input pipeline: tfds `oxford_iiit_pet`, the offline `synthetic_pets`, and users' image/mask folders."""

from unet_jax.data.pipeline import (
  check_global_batch_size,
  denormalize_to_uint8,
  eval_batches,
  eval_dataset,
  normalize_image,
  num_examples,
  resize_image,
  steps_per_epoch,
  train_batches,
)
from unet_jax.data.source import DatasetNotFoundError
from unet_jax.data.synthetic_pets import SyntheticPets

__all__ = [
  "DatasetNotFoundError",
  "SyntheticPets",
  "check_global_batch_size",
  "denormalize_to_uint8",
  "eval_batches",
  "eval_dataset",
  "normalize_image",
  "num_examples",
  "resize_image",
  "steps_per_epoch",
  "train_batches",
]
