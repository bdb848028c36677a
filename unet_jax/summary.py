"""The model's table per stage, like Keras' `model.summary()`: `python -m unet_jax.summary --config configs/pets.py`.

It needs neither weights nor a network: the model is traced with `jax.eval_shape` (shapes only, nothing computed)
and `model.pretrained` is ignored. Flax's `tabulate` draws the table (each stage's inputs, outputs, params and
batch_stats); the totals are counted here because tabulate counts per variable collection, while Keras counts
BatchNorm statistics and a frozen layer's weights as non-trainable parameters, and in Flax freezing is the optimizer's
mask, not a collection. So for the tutorial's model the totals equal Keras' printed 6,504,227 / 4,660,323 / 1,843,904.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from unet_jax import cli, train_state

# Wide enough for the widest row, so that rich wraps no shape when the output is not a terminal (it assumes 80).
TABLE_WIDTH = 160


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str  # The variables' top-level key: "encoder", "up_0", ...
  params: int  # All variables, BatchNorm statistics included (Keras' "Param #").
  trainable: int


@dataclasses.dataclass(frozen=True)
class ModelSummary:
  title: str
  stages: tuple[Stage, ...]
  total: int
  trainable: int
  non_trainable: int
  notes: tuple[str, ...]


def _count(tree: Any) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _model_and_images(config: ml_collections.ConfigDict):
  size = config.data.image_size
  return train_state.create_model(config.model), jnp.zeros((1, size, size, 3))


def summarize(config: ml_collections.ConfigDict) -> ModelSummary:
  """Keras' parameter counts for `config`'s model, per stage (its direct submodules, in call order) and in total."""
  model, images = _model_and_images(config)
  call_order = []

  def init():
    variables = model.init(jax.random.key(0), images, train=False)
    call_order.extend(variables["params"])  # Created as called; the dict eval_shape returns has its keys sorted.
    return variables

  variables = jax.eval_shape(init)
  params, statistics = variables["params"], variables.get("batch_stats", {})
  encoder_frozen = not train_state.encoder_trains(config, 0)
  stages = tuple(
    Stage(
      name,
      _count(params[name]) + _count(statistics.get(name, {})),
      0 if encoder_frozen and name == train_state.ENCODER else _count(params[name]),
    )
    for name in call_order
  )
  total = _count(variables)
  trainable = sum(stage.trainable for stage in stages)
  notes = []
  if encoder_frozen:
    notes.append(
      f"The {train_state.ENCODER}'s {_count(params[train_state.ENCODER]):,} params are frozen"
      + (f" until step {config.unfreeze_at_step}." if config.unfreeze_at_step >= 0 else ".")
    )
  notes.append(f"Non-trainable includes {_count(statistics):,} BatchNorm statistics.")
  title = (
    f"UNet(alpha={config.model.alpha}, num_classes={config.model.num_classes}, "
    f"upsample={config.model.upsample!r}) at {config.data.image_size}x{config.data.image_size} px"
  )
  return ModelSummary(title, stages, total, trainable, total - trainable, tuple(notes))


def stage_table(config: ml_collections.ConfigDict) -> str:
  """`nn.tabulate` of the model one level deep: a row per stage with its input and output shapes (batch size 1)."""
  model, images = _model_and_images(config)
  table = model.tabulate(
    jax.random.key(0), images, train=False, depth=1, console_kwargs={"force_terminal": False, "width": TABLE_WIDTH}
  )
  return "\n".join(line.rstrip() for line in table.strip("\n").splitlines())


def format_summary(summary: ModelSummary, table: str) -> str:
  return "\n".join(
    [
      summary.title,
      table,
      "",
      f"Total params: {summary.total:,}",
      f"Trainable params: {summary.trainable:,}",
      f"Non-trainable params: {summary.non_trainable:,}",
      *summary.notes,
    ]
  )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; options go as --flag=value.")
  config = flags.FLAGS.config
  print(format_summary(summarize(config), stage_table(config)))


def _define_flags() -> None:
  """Only for the program, as the trainer's: importing a module must claim no flag names."""
  config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/pets.py; override fields with --config.field=value.", lock_config=True
  )
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  cli.run(main, name="summary", define_flags=_define_flags)
