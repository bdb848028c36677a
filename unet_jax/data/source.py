"""What every data source hands the pipeline: this process's share of a split, as decoded examples."""

import dataclasses

import tensorflow as tf

from unet_jax import errors


class DatasetNotFoundError(errors.InputNotFoundError):
  """The dataset is not on disk; the message says how to prepare it."""


@dataclasses.dataclass(frozen=True)
class Shard:
  """One process's part of a split.

  `examples` yields {"image": uint8 [H, W, 3], "mask": uint8 [H, W, 1] of class ids}, at the source's own size, in
  the same order on every run. `shard_sizes` lists the example count of every process's shard (this one included):
  the train stream takes as many steps per epoch as the smallest allows, the eval stream pads to the largest, so
  all processes stay in lockstep.
  """

  examples: tf.data.Dataset
  shard_sizes: tuple[int, ...]
