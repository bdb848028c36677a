"""The trainer as a user runs it: the CLI in real processes, on the offline data and the real U-Net (alpha 0.35, 64 px).

One uninterrupted 1-device run is the reference; the other runs (8 simulated devices, killed and restarted,
preempted) are compared with it.
"""

import json
import pathlib
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import train_testlib
from PIL import Image
from train_testlib import synthetic_data_dir  # noqa: F401  (a fixture)

from unet_jax import checkpointing, data, errors, host_memory, train, trainer

NUM_STEPS = train_testlib.TINY["num_train_steps"]


def _events(workdir: pathlib.Path, split: str) -> list[dict]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [event for event in map(json.loads, lines) if event["split"] == split]


def _saved_steps(workdir: pathlib.Path) -> list[int]:
  return sorted(int(path.name) for path in (workdir / "checkpoints").iterdir() if path.name.isdigit())


def _checkpoint(workdir: pathlib.Path, step: int) -> dict:
  """The saved train state as numpy arrays, read by its own metadata onto this process's one device."""
  path = workdir / "checkpoints" / str(step) / "default"
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), checkpointer.metadata(path).item_metadata
  )
  return jax.device_get(checkpointer.restore(path, target))


def _wait_for_checkpoint(process: subprocess.Popen, workdir: pathlib.Path, step: int) -> None:
  deadline = time.monotonic() + 400
  while not (workdir / "checkpoints" / str(step)).is_dir():  # Orbax renames a finished save into place.
    assert process.poll() is None, f"the trainer exited ({process.returncode}) before saving step {step}"
    assert time.monotonic() < deadline, f"no checkpoint of step {step} after 400 s"
    time.sleep(0.02)


def _start_trainer(workdir: pathlib.Path, data_dir: pathlib.Path, log: pathlib.Path) -> subprocess.Popen:
  return subprocess.Popen(
    train_testlib.trainer_command(workdir, data_dir),
    env=train_testlib.trainer_env(),
    cwd=train_testlib.REPO_ROOT,
    stdout=subprocess.DEVNULL,
    stderr=log.open("w"),
  )


@pytest.fixture(scope="module")
def reference(tmp_path_factory, synthetic_data_dir):  # noqa: F811
  return train_testlib.run_once_per_session(tmp_path_factory, "reference", synthetic_data_dir)


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory, synthetic_data_dir):  # noqa: F811
  return train_testlib.run_once_per_session(tmp_path_factory, "eight_devices", synthetic_data_dir, devices=8)


def test_cli_writes_metrics_checkpoints_predictions_and_tensorboard(reference):
  workdir, log = reference
  assert "processes=1 devices=1" in log
  assert "Starting at step 0: " in log and "holds no complete checkpoint." in log

  train_events = _events(workdir, "train")
  assert [e["step"] for e in train_events] == list(range(1, NUM_STEPS + 1))
  assert all(
    np.isfinite(e["loss"]) and 0 <= e["pixel_accuracy"] <= 1 and e["images_per_second"] > 0 for e in train_events
  )
  eval_events = _events(workdir, "eval")
  assert [e["step"] for e in eval_events] == [3, 6]
  for event in eval_events:
    assert len(event["iou_per_class"]) == len(event["dice_per_class"]) == 3
    assert event["mean_iou"] == pytest.approx(np.nanmean(event["iou_per_class"]))
    assert np.sum(event["confusion_matrix"]) == 20 * 64 * 64  # Every pixel of the 20 eval images, padding left out.
    assert np.isfinite(event["loss"]) and 0 <= event["pixel_accuracy"] <= 1

  # Checkpoints every 2 steps and at each eval; kept: the 2 newest and the best eval.
  best = max(eval_events, key=lambda e: e["mean_iou"])["step"]
  assert set(_saved_steps(workdir)) == {4, 6, best}
  assert checkpointing.load_config(workdir).data.name == "synthetic_pets/tiny"

  # The second phase: from step 4 the encoder has Adam moments and moves.
  assert "Step 4: the encoder trains from now on" in log
  at_4, at_6 = _checkpoint(workdir, 4), _checkpoint(workdir, 6)
  assert jax.tree.leaves(at_4["opt_state"]["inner_states"]["encoder"])
  assert any(
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(at_4["params"]["encoder"]), jax.tree.leaves(at_6["params"]["encoder"]))
  )

  for step in (3, 6):
    with Image.open(workdir / "predictions" / f"step_{step:06d}.png") as figure:
      assert figure.format == "PNG" and figure.width > 100 and figure.height > 100
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_8_simulated_devices_match_1_device(reference, eight_devices):
  (workdir_1, _), (workdir_8, log_8) = reference, eight_devices
  assert "devices=8" in log_8 and "mesh=(data=8)" in log_8
  losses_1 = [e["loss"] for e in _events(workdir_1, "train")]
  losses_8 = [e["loss"] for e in _events(workdir_8, "train")]
  np.testing.assert_allclose(losses_8, losses_1, rtol=1e-5, atol=1e-6)
  for eval_1, eval_8 in zip(_events(workdir_1, "eval"), _events(workdir_8, "eval"), strict=True):
    assert eval_8["loss"] == pytest.approx(eval_1["loss"], rel=1e-4)


def test_checkpoint_of_8_devices_restores_on_1(eight_devices, synthetic_data_dir):  # noqa: F811
  workdir = eight_devices[0]
  config = checkpointing.load_config(workdir)
  state = checkpointing.load_run(str(workdir), NUM_STEPS, config).state
  assert jax.device_count() == 1 and int(state.step) == NUM_STEPS
  saved = _checkpoint(workdir, NUM_STEPS)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), saved["params"])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.batch_stats), saved["batch_stats"])


def test_the_trainer_restarted_itself_with_huge_pages_where_the_system_gives_them(reference):
  """`python -m unet_jax.train ...` re-executes itself with glibc's tunable (`unet_jax.host_memory`) and its flags."""
  if host_memory.tunables_with_huge_pages({}, host_memory.glibc_version(), host_memory.thp_mode()) is None:
    pytest.skip(f"no restart here: glibc {host_memory.glibc_version()}, THP mode {host_memory.thp_mode()}")
  _, log = reference
  assert re.search(r"Host memory: GLIBC_TUNABLES=\S*glibc\.malloc\.hugetlb=", log), log[:3000]


def test_the_trainer_reuses_its_steps_freed_blocks_under_glibc(reference):
  """`python -m unet_jax.train ...` keeps a step's freed buffers for the next (`host_memory.reuse_freed_blocks`)."""
  if host_memory.glibc_version() is None:
    pytest.skip("glibc's malloc only")
  _, log = reference
  assert re.search(r"Host memory: .*; freed blocks reused by the next step", log), log[:3000]


def test_sigkill_and_restart_ends_bitwise_equal_to_an_uninterrupted_run(reference, tmp_path, synthetic_data_dir):  # noqa: F811
  workdir = tmp_path / "run"
  process = _start_trainer(workdir, synthetic_data_dir, tmp_path / "killed.log")
  _wait_for_checkpoint(process, workdir, 2)
  process.kill()  # SIGKILL: no handler, no cleanup, possibly in the middle of the next save.
  process.wait()
  assert NUM_STEPS not in _saved_steps(workdir), "the run finished before the kill: nothing was interrupted"

  result = train_testlib.run_trainer(workdir, synthetic_data_dir)
  assert "Resumed from" in result.stderr
  jax.tree.map(np.testing.assert_array_equal, _checkpoint(workdir, NUM_STEPS), _checkpoint(reference[0], NUM_STEPS))


def test_sigterm_saves_a_checkpoint_and_exits_as_preempted(tmp_path, synthetic_data_dir):  # noqa: F811
  workdir = tmp_path / "run"
  log = tmp_path / "preempted.log"
  process = _start_trainer(workdir, synthetic_data_dir, log)
  _wait_for_checkpoint(process, workdir, 2)
  process.send_signal(signal.SIGTERM)
  # Not 0: a scheduler must see that the run did not finish (and rerun it, which resumes).
  assert process.wait(timeout=120) == train.PREEMPTED_EXIT_CODE == 143
  message = [line for line in log.read_text().splitlines() if "Preempted (SIGTERM) at step" in line]
  assert message, log.read_text()[-3000:]
  step = int(message[0].split("at step ")[1].split(":")[0])
  assert step in _saved_steps(workdir)


def _copy_of(workdir: pathlib.Path, tmp_path: pathlib.Path) -> tuple[pathlib.Path, str]:
  """A copy of a finished run, and the data_dir it trained on (another test process's: resuming with the same one
  changes nothing but what the test changes)."""
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  return copy, checkpointing.load_config(copy).data.data_dir


def test_resuming_with_another_model_is_refused_and_the_run_kept(reference, tmp_path):
  workdir, data_dir = _copy_of(reference[0], tmp_path)
  config_json = (workdir / checkpointing.CONFIG_FILE).read_bytes()
  result = train_testlib.run_trainer(workdir, data_dir, {"model.alpha": 0.5, "num_train_steps": 8}, check=False)
  assert result.returncode == 1
  assert "model.alpha was 0.35, now 0.5" in result.stderr and "--config.model.alpha=0.35" in result.stderr
  assert "Traceback" not in result.stderr
  assert (workdir / checkpointing.CONFIG_FILE).read_bytes() == config_json
  assert _saved_steps(workdir) == _saved_steps(reference[0])


def test_resuming_longer_records_the_change_and_removes_an_interrupted_save(reference, tmp_path):
  workdir, data_dir = _copy_of(reference[0], tmp_path)
  (workdir / "checkpoints" / "8.orbax-checkpoint-tmp" / "default.orbax-checkpoint-tmp").mkdir(parents=True)
  result = train_testlib.run_trainer(workdir, data_dir, {"num_train_steps": 8})
  assert (
    f"Resumed from {workdir / 'checkpoints'} at step {NUM_STEPS}, its newest readable checkpoint (the "
    f"interrupted save(s) ['8.orbax-checkpoint-tmp'] of an earlier run were removed)"
  ) in result.stderr
  assert 8 in _saved_steps(workdir)
  (entry,) = map(json.loads, (workdir / checkpointing.CONFIG_HISTORY_FILE).read_text().splitlines())
  assert entry["changes"] == {"num_train_steps": {"from": NUM_STEPS, "to": 8}}
  assert checkpointing.load_config(workdir).num_train_steps == 8


def test_an_unreadable_latest_checkpoint_resumes_from_the_one_before_exactly(reference, tmp_path):
  workdir, data_dir = _copy_of(reference[0], tmp_path)
  for path in (workdir / "checkpoints" / str(NUM_STEPS)).rglob("*"):
    if path.is_file() and "ocdbt" in str(path):
      path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # Truncated, as by a full disk or a cut copy.
  result = train_testlib.run_trainer(workdir, data_dir)
  assert f"The checkpoint of step {NUM_STEPS} in {workdir / 'checkpoints'} cannot be read" in result.stderr
  assert "Resumed from" in result.stderr and f"step(s) [{NUM_STEPS}] were moved aside" in result.stderr
  assert (workdir / "checkpoints" / f"{checkpointing.UNREADABLE_PREFIX}{NUM_STEPS}").is_dir()
  jax.tree.map(np.testing.assert_array_equal, _checkpoint(workdir, NUM_STEPS), _checkpoint(reference[0], NUM_STEPS))


@pytest.mark.parametrize(
  "field, value",
  [
    ("num_train_steps", 0),
    ("num_train_steps", -5),
    ("eval_every_steps", 0),
    ("log_every_steps", 0),
    ("checkpoint_every_steps", -2),
  ],
)
def test_step_counts_that_cannot_work_fail_before_anything_is_written(tmp_path, field, value):
  config = train_testlib.tiny_config(tmp_path / "tfds", {field: value})
  with pytest.raises(errors.ConfigError, match=f"config.{field}={value} must be (a )?positive"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def test_a_workdir_that_cannot_be_written_fails_before_training(tmp_path, synthetic_data_dir):  # noqa: F811
  (tmp_path / "a_file").write_text("")
  with pytest.raises(errors.ConfigError, match="Cannot write to the workdir .*a_file/run"):
    trainer.train_and_evaluate(train_testlib.tiny_config(synthetic_data_dir), str(tmp_path / "a_file" / "run"))


def test_a_diverging_loss_is_warned_about_once_per_split(caplog):
  config = train_testlib.tiny_config("", {"learning_rate": 1e6})
  assert trainer.divergence_threshold(config) == pytest.approx(10 * np.log(3))
  warning = trainer._DivergenceWarning(config)  # pylint: disable=protected-access
  with caplog.at_level("WARNING"):
    warning.check("train", 1, 1.2)  # A fresh model's loss: near log(3).
    assert not caplog.records
    warning.check("train", 50, 1e12)
    warning.check("train", 100, 1e13)
    warning.check("eval", 100, 1e15)
  messages = [record.getMessage() for record in caplog.records]
  assert len(messages) == 2 and "1e+12 at step 50" in messages[0] and "learning_rate (now 1e+06)" in messages[0]
  assert "eval loss is 1e+15" in messages[1]


@pytest.fixture
def small_disk(tmp_path):
  """A 6 MB tmpfs: room for the tiny run's first checkpoints (2.6 MB each in the frozen phase), not for all."""
  mount_point = tmp_path / "small_disk"
  mount_point.mkdir()
  mounted = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount_point)], capture_output=True, text=True
  )
  if mounted.returncode:
    pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
  yield mount_point
  subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_stops_the_run_with_the_cause_and_the_last_complete_checkpoint(small_disk, synthetic_data_dir):  # noqa: F811
  workdir = small_disk / "run"
  result = train_testlib.run_trainer(workdir, synthetic_data_dir, check=False)
  assert result.returncode == 1
  assert f"train: error: Saving a checkpoint in {workdir / 'checkpoints'} failed" in result.stderr
  assert "No space left on device" in result.stderr and "MiB free" in result.stderr
  assert "Traceback" not in result.stderr
  last = _saved_steps(workdir)[-1]
  assert last >= 2 and f"last complete checkpoint, step {last}, is intact" in result.stderr
  restored = _checkpoint(workdir, last)
  assert int(restored["step"]) == last
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(restored["params"]))


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"batch_size": 0}, "config.batch_size=0 must be positive"),
    ({"data.image_size": 100}, "multiple of 32"),
    (
      {
        "data.name": "folder",
        "data.folder.root": "no_such_dir",
        "data.train_split": "train",
        "data.eval_split": "test",
      },
      "no_such_dir/images",
    ),
  ],
)
def test_user_errors_are_the_message_alone(tmp_path, synthetic_data_dir, overrides, message):  # noqa: F811
  result = train_testlib.run_trainer(tmp_path / "run", synthetic_data_dir, overrides, check=False)
  assert result.returncode == 1
  assert "train: error: " in result.stderr and message in result.stderr
  assert "Traceback" not in result.stderr


def test_unknown_config_key_is_a_clear_error(tmp_path, synthetic_data_dir):  # noqa: F811
  result = train_testlib.run_trainer(tmp_path / "run", synthetic_data_dir, {"model.alfa": 0.5}, check=False)
  assert result.returncode != 0
  assert "--config.model.alfa=0.5: the config has no field 'model.alfa'; did you mean 'model.alpha'?" in result.stderr
  assert "Traceback" not in result.stderr


def test_batch_not_divisible_by_the_device_count_is_a_clear_error(tmp_path, synthetic_data_dir):  # noqa: F811
  result = train_testlib.run_trainer(tmp_path / "run", synthetic_data_dir, {"batch_size": 12}, devices=8, check=False)
  assert result.returncode != 0
  assert "12" in result.stderr and "8" in result.stderr and "batch_size" in result.stderr


def test_bad_test_time_scales_fail_before_training(tmp_path, synthetic_data_dir):  # noqa: F811
  config = train_testlib.tiny_config(synthetic_data_dir, {"eval_scales": (1.0, -0.5)})
  with pytest.raises(ValueError, match=r"scales \(1.0, -0.5\) must be positive"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_dataset_offline_is_a_clear_error(tmp_path, synthetic_data_dir):  # noqa: F811
  config = train_testlib.tiny_config(tmp_path / "empty_tfds", {"data.name": "oxford_iiit_pet"})
  with pytest.raises(data.DatasetNotFoundError, match="tfds build oxford_iiit_pet"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, synthetic_data_dir, monkeypatch):  # noqa: F811
  real_train_batches = data.train_batches

  def poisoned_at_step_3(*args, **kwargs):
    for step, batch in enumerate(real_train_batches(*args, **kwargs), start=1):
      if step == 3:
        batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
      yield batch

  monkeypatch.setattr(data, "train_batches", poisoned_at_step_3)
  workdir = tmp_path / "run"
  with pytest.raises(FloatingPointError, match="at step 3"):
    trainer.train_and_evaluate(train_testlib.tiny_config(synthetic_data_dir), str(workdir))
  assert _saved_steps(workdir) == [2]
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(_checkpoint(workdir, 2)["params"]))
