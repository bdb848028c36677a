"""The model's table per stage, like Keras' `model.summary()`: `python -m unet_jax.summary --config configs/pets.py`.

It needs neither weights nor a network: the model is traced with `jax.eval_shape` (shapes only, nothing computed)
and `model.pretrained` is ignored. Counts follow Keras: BatchNorm statistics are parameters, never trainable; the
frozen encoder is non-trainable, so for the tutorial's model the totals equal its printed 6,504,227 /
4,660,323 / 1,843,904.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from unet_jax import cli, train_state



@dataclasses.dataclass(frozen=True)
class Stage:
  name: str  # The variables' top-level key: "encoder", "up_0", ...
  module: str  # Class name.
  input_shapes: tuple[tuple[int, ...], ...]
  output_shapes: tuple[tuple[int, ...], ...]
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


def _shapes(tree: Any) -> tuple[tuple[int, ...], ...]:
  return tuple(tuple(leaf.shape) for leaf in jax.tree.leaves(tree) if hasattr(leaf, "shape"))


def summarize(config: ml_collections.ConfigDict) -> ModelSummary:
  """The stages (the model's direct submodules, in call order) with shapes and parameter counts for `config`."""
  model = train_state.create_model(config.model)
  size = config.data.image_size
  calls: list[dict[str, Any]] = []

  def record_stage_calls(next_fun, args, kwargs, context):
    path = context.module.path
    if context.method_name != "__call__" or len(path) != 1:
      return next_fun(*args, **kwargs)
    call = {"name": path[0], "module": type(context.module).__name__, "inputs": _shapes(args)}
    calls.append(call)  # Before running it, so that the list is in call order.
    call["outputs"] = _shapes(outputs := next_fun(*args, **kwargs))
    return outputs

  with nn.intercept_methods(record_stage_calls):
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), train=False))

  encoder_frozen = not train_state.encoder_trains(config, 0)
  stages = []
  for call in calls:
    name = call["name"]
    params = _count(variables["params"].get(name, {}))
    statistics = _count(variables.get("batch_stats", {}).get(name, {}))
    frozen = encoder_frozen and name == train_state.ENCODER
    stages.append(Stage(name, call["module"], call["inputs"], call["outputs"], params + statistics,
                        0 if frozen else params))
  total = _count(variables)
  trainable = sum(stage.trainable for stage in stages)
  notes = []
  if encoder_frozen:
    notes.append(f"The {train_state.ENCODER} is frozen" + (
        f" until step {config.unfreeze_at_step}." if config.unfreeze_at_step >= 0 else "."))
  notes.append(f"Non-trainable includes {_count(variables.get('batch_stats', {})):,} BatchNorm statistics.")
  title = (f"UNet(alpha={config.model.alpha}, num_classes={config.model.num_classes}, "
           f"upsample={config.model.upsample!r}) at {size}x{size} px")
  return ModelSummary(title, tuple(stages), total, trainable, total - trainable, tuple(notes))


def _shape_text(shape: Sequence[int]) -> str:
  return "(" + ", ".join(["N", *map(str, shape[1:])]) + ")"  # The batch size is free: N, as Keras' None.


def format_summary(summary: ModelSummary) -> str:
  headers = ("Stage", "Module", "Input shape", "Output shape", "Param #", "Trainable")
  rows = []
  for stage in summary.stages:
    inputs = [_shape_text(shape) for shape in stage.input_shapes]
    outputs = [_shape_text(shape) for shape in stage.output_shapes]
    status = f"{stage.trainable:,}" if stage.trainable or not stage.params else "0 (frozen)"
    lines = max(len(inputs), len(outputs), 1)
    for line in range(lines):
      first = line == 0
      rows.append((stage.name if first else "", stage.module if first else "",
                   inputs[line] if line < len(inputs) else "", outputs[line] if line < len(outputs) else "",
                   f"{stage.params:,}" if first else "", status if first else ""))
  widths = [max(len(row[column]) for row in (headers, *rows)) for column in range(len(headers))]

  numeric = {headers.index("Param #"), headers.index("Trainable")}

  def line_of(cells):
    return "  ".join(cell.rjust(width) if column in numeric else cell.ljust(width)
                     for column, (cell, width) in enumerate(zip(cells, widths))).rstrip()

  rule = "=" * len(line_of(headers))
  return "\n".join([
      summary.title, rule, line_of(headers), "-" * len(rule), *map(line_of, rows), rule,
      f"Total params: {summary.total:,}", f"Trainable params: {summary.trainable:,}",
      f"Non-trainable params: {summary.non_trainable:,}", *summary.notes])


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; options go as --flag=value.")
  print(format_summary(summarize(flags.FLAGS.config)))


def _define_flags() -> None:
  """Only for the program, as the trainer's: importing a module must claim no flag names."""
  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/pets.py; override fields with "
                                  "--config.field=value.", lock_config=True)
  flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
  cli.run(main, name="summary", define_flags=_define_flags)
