"""Which checkpoints Orbax keeps, the saved config, and the SIGTERM notice (no model: a tiny state, seconds)."""

import json
import math
import os
import signal

import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import checkpointing, default_config


def _save_all(manager, eval_mean_iou: dict[int, float], last_step: int) -> None:
  for step in range(1, last_step + 1):
    metrics = {"mean_iou": eval_mean_iou[step]} if step in eval_mean_iou else None
    checkpointing.save(manager, step, {"w": jnp.full((3,), float(step))}, metrics=metrics)
  manager.wait_until_finished()


def test_keeps_the_newest_and_the_best_by_eval_mean_iou(tmp_path):
  manager = checkpointing.make_manager(str(tmp_path), max_to_keep=2)
  _save_all(manager, {2: 0.9, 4: 0.5, 5: math.nan}, last_step=6)  # A NaN mean IoU (a collapsed eval) is never best.
  assert manager.all_steps() == [2, 5, 6]
  assert manager.best_step() == 2
  restored = checkpointing.restore(manager, 2, {"w": jnp.zeros((3,))})
  np.testing.assert_array_equal(restored["w"], [2.0, 2.0, 2.0])
  manager.close()


def test_saving_a_step_twice_keeps_the_first(tmp_path):
  manager = checkpointing.make_manager(str(tmp_path), max_to_keep=2)
  assert checkpointing.save(manager, 1, {"w": jnp.ones(2)})
  manager.wait_until_finished()
  assert not checkpointing.save(manager, 1, {"w": jnp.zeros(2)})  # The end of a run that just saved this step.
  np.testing.assert_array_equal(checkpointing.restore(manager, 1, {"w": jnp.zeros(2)})["w"], [1.0, 1.0])
  manager.close()


def test_config_is_saved_beside_the_checkpoints(tmp_path):
  config = default_config.get_config()
  config.model.alpha = 0.35
  checkpointing.save_config(str(tmp_path), config)
  loaded = checkpointing.load_config(str(tmp_path))
  assert loaded.model.alpha == 0.35 and loaded.data.name == config.data.name
  with pytest.raises(FileNotFoundError, match="--workdir of a training run"):
    checkpointing.load_config(str(tmp_path / "elsewhere"))


def test_a_config_saved_before_newer_fields_loads_with_their_defaults(tmp_path):
  saved = default_config.get_config().to_dict()
  saved["model"]["alpha"] = 0.35
  del saved["eval_flip_average"], saved["model"]["conv_impl"]
  (tmp_path / checkpointing.CONFIG_FILE).write_text(json.dumps(saved))
  loaded = checkpointing.load_config(str(tmp_path))
  assert (loaded.model.alpha, loaded.model.conv_impl, loaded.eval_flip_average) == (0.35, "auto", False)


def test_sigterm_is_noticed_between_steps_and_the_handler_restored(tmp_path):
  manager = checkpointing.make_manager(str(tmp_path), max_to_keep=1)
  before = signal.getsignal(signal.SIGTERM)
  notice = checkpointing.PreemptionNotice(manager)
  assert not notice.reached(1)
  os.kill(os.getpid(), signal.SIGTERM)  # Would end the test process without the notice's handler.
  assert notice.reached(2)
  notice.close()
  assert signal.getsignal(signal.SIGTERM) == before
  manager.close()
