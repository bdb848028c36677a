"""Which checkpoints Orbax keeps, the saved config, and the SIGTERM notice (no model: a tiny state, seconds)."""

import json
import logging
import math
import os
import signal

import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import checkpointing, default_config, errors


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
  checkpointing.record_config(str(tmp_path), config, has_checkpoints=False)
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


def _state(value: float) -> dict:
  return {"w": jnp.full((3,), value), "b": jnp.full((2, 2), -value)}


def _target(step: int) -> dict:
  return _state(0.0)


def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before_and_is_set_aside(tmp_path, caplog):
  manager = checkpointing.make_manager(str(tmp_path), max_to_keep=3)
  for step in (1, 2, 3):
    checkpointing.save(manager, step, _state(float(step)))
  manager.close()
  # Truncate every data file of step 3, as a disk that filled up or a copy that was cut short would.
  data_files = [
    path
    for path in (tmp_path / "checkpoints" / "3").rglob("*")
    if path.is_file() and path.stat().st_size > 0 and "ocdbt" in str(path)
  ]
  assert data_files
  for path in data_files:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])

  manager = checkpointing.make_manager(str(tmp_path), max_to_keep=3)
  with pytest.raises(checkpointing.CheckpointError, match="step 3 in .*cannot be read"):
    checkpointing.restore(manager, 3, _target(3))
  unreadable = []

  def set_aside(step: int) -> None:
    unreadable.append(step)
    checkpointing.set_aside(manager, step)

  with caplog.at_level(logging.WARNING):
    step, state = checkpointing.restore_newest_readable(manager, _target, on_unreadable=set_aside)
  assert (step, unreadable) == (2, [3])
  np.testing.assert_array_equal(state["w"], [2.0, 2.0, 2.0])
  assert "step 3" in caplog.text and "trying the checkpoint before it" in caplog.text
  assert (tmp_path / "checkpoints" / f"{checkpointing.UNREADABLE_PREFIX}3").is_dir()  # Kept, not deleted.
  assert manager.all_steps() == [1, 2]
  assert checkpointing.save(manager, 3, _state(3.5))  # The resumed run can save that step again.
  np.testing.assert_array_equal(checkpointing.restore(manager, 3, _target(3))["w"], [3.5, 3.5, 3.5])
  manager.close()


def test_no_readable_checkpoint_is_a_clear_error(tmp_path):
  manager = checkpointing.make_manager(str(tmp_path), max_to_keep=3)
  checkpointing.save(manager, 1, _state(1.0))
  for path in (tmp_path / "checkpoints" / "1").rglob("*"):
    if path.is_file():
      path.write_bytes(b"")
  set_aside = []
  with pytest.raises(checkpointing.CheckpointError, match="No checkpoint in .* can be read .*step 1.*new --workdir"):
    checkpointing.restore_newest_readable(manager, _target, on_unreadable=set_aside.append)
  assert set_aside == []  # With nothing readable (a state of another structure, say), every step stays in place.
  manager.close()


def test_a_failed_save_names_the_directory_the_cause_and_the_last_complete_step(tmp_path, monkeypatch):
  manager = checkpointing.make_manager(str(tmp_path), max_to_keep=3)
  checkpointing.save(manager, 1, _state(1.0))

  def disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(manager, "save", disk_full)
  with pytest.raises(checkpointing.CheckpointError) as raised:
    checkpointing.save(manager, 2, _state(2.0))
  message = str(raised.value)
  assert str(tmp_path / "checkpoints") in message and "No space left on device" in message
  assert "last complete checkpoint, step 1, is intact" in message
  assert isinstance(raised.value, errors.UserError)
  monkeypatch.undo()
  np.testing.assert_array_equal(checkpointing.restore(manager, 1, _target(1))["w"], [1.0, 1.0, 1.0])
  manager.close()


def test_interrupted_saves_are_removed_and_named(tmp_path):
  directory = tmp_path / "checkpoints"
  manager = checkpointing.make_manager(str(tmp_path), max_to_keep=2)
  checkpointing.save(manager, 1, _state(1.0))
  manager.close()
  (directory / "2.orbax-checkpoint-tmp" / "default.orbax-checkpoint-tmp").mkdir(parents=True)  # A killed save.
  assert checkpointing.complete_steps(directory) == [1]
  assert checkpointing.remove_interrupted_saves(directory) == ["2.orbax-checkpoint-tmp"]
  assert sorted(path.name for path in directory.iterdir()) == ["1"]


def test_a_relative_workdir_means_the_current_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  manager = checkpointing.make_manager("runs/x", max_to_keep=1)
  assert checkpointing.save(manager, 1, _state(1.0))
  manager.close()
  assert checkpointing.complete_steps(tmp_path / "runs" / "x" / "checkpoints") == [1]


def _trained_config():
  config = default_config.get_config()
  config.model.alpha = 0.35
  return config


def test_resuming_with_another_model_is_refused_before_anything_is_written(tmp_path):
  checkpointing.record_config(str(tmp_path), _trained_config(), has_checkpoints=False)
  saved = (tmp_path / checkpointing.CONFIG_FILE).read_bytes()
  changed = _trained_config()
  changed.model.alpha = 0.5
  changed.optimizer = "sgd"
  with pytest.raises(errors.ConfigError) as raised:
    checkpointing.record_config(str(tmp_path), changed, has_checkpoints=True)
  message = str(raised.value)
  assert "model.alpha was 0.35, now 0.5" in message and "optimizer was 'adam', now 'sgd'" in message
  assert "--config.model.alpha=0.35 --config.optimizer=adam" in message and "new --workdir" in message
  assert (tmp_path / checkpointing.CONFIG_FILE).read_bytes() == saved
  assert not (tmp_path / checkpointing.CONFIG_HISTORY_FILE).exists()
  # Without checkpoints nothing was trained with the old config: the new one simply replaces it.
  checkpointing.record_config(str(tmp_path), changed, has_checkpoints=False)
  assert checkpointing.load_config(str(tmp_path)).model.alpha == 0.5


def test_resuming_with_safe_changes_records_them_in_the_history(tmp_path):
  checkpointing.record_config(str(tmp_path), _trained_config(), has_checkpoints=False)
  checkpointing.record_config(str(tmp_path), _trained_config(), has_checkpoints=True)  # The same: nothing to record.
  assert not (tmp_path / checkpointing.CONFIG_HISTORY_FILE).exists()
  longer = _trained_config()
  longer.num_train_steps = 5000
  longer.eval_every_steps = 100
  longer.eval_scales = (0.75, 1.0)
  longer.model.pretrained = "/elsewhere/weights.h5"  # Read only when a run starts from scratch.
  checkpointing.record_config(str(tmp_path), longer, has_checkpoints=True)
  (entry,) = map(json.loads, (tmp_path / checkpointing.CONFIG_HISTORY_FILE).read_text().splitlines())
  assert entry["changes"] == {
    "eval_every_steps": {"from": -1, "to": 100},
    "eval_scales": {"from": [1.0], "to": [0.75, 1.0]},
    "model.pretrained": {"from": "imagenet", "to": "/elsewhere/weights.h5"},
    "num_train_steps": {"from": -1, "to": 5000},
  }
  assert checkpointing.load_config(str(tmp_path)).num_train_steps == 5000
