"""The summary table: Keras' counts for the tutorial model, the optimizer's frozen split, the CLI without weights."""

import os
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


def test_tutorial_model_counts_equal_keras_summary():
  # Keras' model.summary() of the tutorial's model (MobileNetV2 alpha 1.0 down stack frozen, pix2pix decoder,
  # 128 px, 3 classes) prints: Total params: 6504227, Trainable params: 4660323, Non-trainable params: 1843904.
  result = summary.summarize(runpy.run_path(str(PETS_CONFIG))["get_config"]())
  assert (result.total, result.trainable, result.non_trainable) == (6_504_227, 4_660_323, 1_843_904)
  assert [stage.name for stage in result.stages] == ["encoder", "up_0", "up_1", "up_2", "up_3", "last"]
  encoder = result.stages[0]
  assert encoder.trainable == 0
  assert encoder.output_shapes == ((1, 64, 64, 96), (1, 32, 32, 144), (1, 16, 16, 192), (1, 8, 8, 576),
                                   (1, 4, 4, 320))
  # The decoder's inputs show the skips: up_1 sees 512 upsampled + 576 skip channels.
  assert sum(shape[-1] for shape in result.stages[2].input_shapes) == 512 + 576
  assert result.stages[-1].output_shapes == ((1, 128, 128, 3),)
  assert sum(stage.params for stage in result.stages) == result.total


@pytest.mark.parametrize("freeze_encoder", [True, False])
def test_trainable_count_is_what_the_optimizer_updates(tmp_path, freeze_encoder):
  config = tiny_config(tmp_path, {"model.freeze_encoder": freeze_encoder, "data.image_size": 32,
                                 "lr_schedule": "constant", "warmup_steps": 0})
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
  result = subprocess.run([sys.executable, "-m", "unet_jax.summary", f"--config={PETS_CONFIG}",
                           "--config.model.num_classes=5"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert "num_classes=5" in lines[0]
  last = next(line for line in lines if line.startswith("last"))
  assert "(N, 128, 128, 5)" in last
  # 5 classes instead of 3: the last conv gains 2 * (3 * 3 * 160 + 1) trainable parameters.
  assert "Trainable params: 4,663,205" in lines
