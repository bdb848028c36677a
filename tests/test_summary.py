"""The summary: Keras' counts for the tutorial model, the optimizer's frozen split, the stage table, the CLI without
weights."""

import os
import re
import runpy
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_testlib import REPO_ROOT, tiny_config

from unet_jax import summary, train_state

PETS_CONFIG = REPO_ROOT / "configs" / "pets.py"


def _table_rows(text: str) -> dict[str, dict[str, str]]:
  """The rendered table's stage rows: path -> column name -> the cell's lines joined by spaces."""
  lines = text.splitlines()
  columns = [cell.strip() for cell in next(line for line in lines if line.startswith("┃")).strip("┃").split("┃")]
  rows, path = {}, None
  for line in lines:
    if not line.startswith("│"):  # A rule between rows (or text around the table).
      path = None
      continue
    cells = [cell.strip() for cell in line.strip("│").split("│")]
    path = path or cells[0] or None  # A row's path is on its first line; the model's own row has none.
    if path:
      row = rows.setdefault(path, dict.fromkeys(columns, ""))
      for column, cell in zip(columns, cells):
        row[column] = f"{row[column]} {cell}".strip()
  return rows


def _shapes(cell: str) -> list[tuple[int, ...]]:
  return [tuple(map(int, shape.split(","))) for shape in re.findall(r"float32\[([\d,]+)\]", cell)]


def _counts(cell: str) -> int:
  return sum(int(count.replace(",", "")) for count in re.findall(r"([\d,]+) \([\d.]+ [KMG]?B\)", cell))


def test_tutorial_model_counts_equal_keras_summary():
  # Keras' model.summary() of the tutorial's model (MobileNetV2 alpha 1.0 down stack frozen, pix2pix decoder,
  # 128 px, 3 classes) prints: Total params: 6504227, Trainable params: 4660323, Non-trainable params: 1843904.
  config = runpy.run_path(str(PETS_CONFIG))["get_config"]()
  result = summary.summarize(config)
  assert (result.total, result.trainable, result.non_trainable) == (6_504_227, 4_660_323, 1_843_904)
  names = ["encoder", "up_0", "up_1", "up_2", "up_3", "last"]
  assert [stage.name for stage in result.stages] == names
  assert result.stages[0].trainable == 0
  assert sum(stage.params for stage in result.stages) == result.total

  rows = _table_rows(summary.stage_table(config))
  assert list(rows) == names  # In call order.
  assert _shapes(rows["encoder"]["outputs"]) == [
    (1, 64, 64, 96),
    (1, 32, 32, 144),
    (1, 16, 16, 192),
    (1, 8, 8, 576),
    (1, 4, 4, 320),
  ]
  # The decoder's inputs show the skips: up_1 sees 512 upsampled + 576 skip channels.
  assert _shapes(rows["up_1"]["inputs"]) == [(1, 8, 8, 512), (1, 8, 8, 576)]
  assert _shapes(rows["last"]["outputs"]) == [(1, 128, 128, 3)]
  # The table's params and batch_stats per stage add up to the stage's Keras "Param #".
  assert [_counts(rows[name]["params"]) + _counts(rows[name]["batch_stats"]) for name in names] == [
    stage.params for stage in result.stages
  ]


@pytest.mark.parametrize("freeze_encoder", [True, False])
def test_trainable_count_is_what_the_optimizer_updates(tmp_path, freeze_encoder):
  config = tiny_config(
    tmp_path,
    {"model.freeze_encoder": freeze_encoder, "data.image_size": 32, "lr_schedule": "constant", "warmup_steps": 0},
  )
  model = train_state.create_model(config.model)
  tx = train_state.make_optimizer(config, 10, train_encoder=train_state.encoder_trains(config, 0))
  # Shapes only (running the model is not the point), then one real optimizer update of all-ones gradients.
  state = jax.eval_shape(lambda: train_state.create_train_state(model, tx, jax.random.PRNGKey(0), 32))

  def update_of_ones():
    params = jax.tree.map(lambda p: jnp.ones(p.shape, p.dtype), state.params)
    return tx.update(params, tx.init(params), params)[0]

  updates = jax.jit(update_of_ones)()
  moved = sum(int(np.prod(u.shape)) for u in jax.tree.leaves(updates) if np.any(np.asarray(u) != 0))

  result = summary.summarize(config)
  assert result.trainable == moved
  frozen_encoder = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params["encoder"]))
  assert result.non_trainable == _size(state.batch_stats) + (frozen_encoder if freeze_encoder else 0)


def _size(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def test_cli_prints_the_table_without_weights(tmp_path):
  # pets.py asks for the ImageNet encoder; an empty Keras cache (and no network) must not matter.
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "KERAS_HOME": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
  result = subprocess.run(
    [sys.executable, "-m", "unet_jax.summary", f"--config={PETS_CONFIG}", "--config.model.num_classes=5"],
    env=env,
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert "num_classes=5" in lines[0]
  assert _shapes(_table_rows(result.stdout)["last"]["outputs"]) == [(1, 128, 128, 5)]
  # 5 classes instead of 3: the last conv gains 2 * (3 * 3 * 160 + 1) trainable parameters.
  assert "Trainable params: 4,663,205" in lines
