"""The offline `synthetic_pets` tfds builder: built for real (tiny config), same features as oxford_iiit_pet."""

import errno
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from train_testlib import REPO_ROOT, trainer_env

from unet_jax import data, default_config
from unet_jax.data import synthetic_pets

FEATURES = ("image", "segmentation_mask", "label", "file_name")


@pytest.fixture
def no_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise OSError("the network is off in this test")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


def test_builds_on_first_use_offline_with_the_oxford_iiit_pet_features(tmp_path, no_network):
  config = default_config.get_config().data
  config.name, config.data_dir = "synthetic_pets/tiny", str(tmp_path)
  assert data.num_examples(config, "train") == 64 and data.num_examples(config, "test") == 24  # Builds it.

  builder = tfds.builder("synthetic_pets/tiny", data_dir=tmp_path)
  pets = tfds.builder("oxford_iiit_pet", data_dir=tmp_path / "nothing").info.features
  for name in FEATURES:
    ours = builder.info.features[name]
    assert type(ours) is type(pets[name]) and ours.shape == pets[name].shape and ours.dtype == pets[name].dtype

  examples = list(tfds.as_numpy(builder.as_dataset(split="train")))
  assert len({ex["file_name"] for ex in examples}) == 64
  shapes = {ex["image"].shape for ex in examples}
  assert len(shapes) > 30 and all(40 <= h <= 72 and 40 <= w <= 72 and c == 3 for h, w, c in shapes)
  for ex in examples:
    assert ex["segmentation_mask"].shape == ex["image"].shape[:2] + (1,)
    assert set(np.unique(ex["segmentation_mask"])) == {1, 2, 3}
    assert 0 <= ex["label"] < len(synthetic_pets.TEXTURES)


# Imports, says so, then waits for the start file: every process prepares the dataset at the same moment.
_PREPARE_AT_ONCE = """
import os, pathlib, sys, time
from unet_jax import data, default_config
config = default_config.get_config().data
config.name, config.data_dir = "synthetic_pets/tiny", sys.argv[1]
pathlib.Path(sys.argv[2], f"ready.{os.getpid()}").touch()
while not pathlib.Path(sys.argv[2], "start").exists():
  time.sleep(0.01)
print(data.num_examples(config, "train"))
"""


def test_processes_that_build_it_at_once_all_get_it(tmp_path):
  """pytest workers and the hosts of a run may all use it first at once: the last to finish must not fail."""
  processes = [
    subprocess.Popen(
      [sys.executable, "-c", _PREPARE_AT_ONCE, str(tmp_path / "tfds"), str(tmp_path)],
      env=trainer_env(),
      cwd=REPO_ROOT,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for _ in range(3)
  ]
  deadline = time.monotonic() + 300
  while len(list(tmp_path.glob("ready.*"))) < 3 and time.monotonic() < deadline:
    assert all(process.poll() is None for process in processes), "a process died while importing"
    time.sleep(0.1)
  (tmp_path / "start").touch()
  for process in processes:
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert stdout.split()[-1] == "64"
  assert [path.name for path in (tmp_path / "tfds" / "synthetic_pets" / "tiny").iterdir()] == ["1.0.0"]


def test_losing_the_race_with_directory_not_empty_uses_the_winners_copy(tmp_path, monkeypatch):
  """Which error the loser's final rename raises depends on timing: FileExistsError, or OSError ENOTEMPTY."""
  config = default_config.get_config().data
  config.name, config.data_dir = "synthetic_pets/tiny", str(tmp_path)
  assert data.num_examples(config, "train") == 64  # The winner prepares it.
  first_look = iter([False])  # The loser checked before the winner finished.
  is_prepared = tfds.core.DatasetBuilder.is_prepared
  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: next(first_look, is_prepared(self)))

  def lose(self, **kwargs):
    raise OSError(errno.ENOTEMPTY, "Directory not empty", str(tmp_path))

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", lose)
  assert data.num_examples(config, "test") == 24

  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: False)  # Nobody won: the error stands.
  with pytest.raises(OSError, match="Directory not empty"):
    data.num_examples(config, "test")


def test_each_example_is_a_pure_function_of_its_seed():
  first = synthetic_pets.draw_example(np.random.default_rng([1, 0, 5]), 96, 200)
  again = synthetic_pets.draw_example(np.random.default_rng([1, 0, 5]), 96, 200)
  other = synthetic_pets.draw_example(np.random.default_rng([1, 0, 6]), 96, 200)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert first[0].shape != other[0].shape or not np.array_equal(first[0], other[0])


def test_default_size_is_at_least_2000_train_and_500_test():
  default = next(c for c in synthetic_pets.SyntheticPets.BUILDER_CONFIGS if c.name == "default")
  assert default.num_train >= 2000 and default.num_test >= 500
  assert synthetic_pets.SyntheticPets.DEFAULT_CONFIG_NAME == "default"


def high_frequency(image: np.ndarray) -> np.ndarray:
  """|Laplacian| of the luminance: large on fine texture, small on smooth blotches."""
  grey = image.astype(np.float32).mean(-1)
  return np.abs(4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:])


def test_examples_make_a_fair_but_learnable_task():
  cut_by_edge = camouflaged = textured = 0
  widths = []
  for index in range(60):
    image, trimap, _ = synthetic_pets.draw_example(np.random.default_rng([7, index]), 96, 200)
    trimap = trimap[..., 0]
    obj, background = trimap == 1, trimap == 2
    assert 0.03 < obj.mean() < 0.75  # Varied sizes, never empty nor everything.
    outline = np.sum(obj[1:] != obj[:-1]) + np.sum(obj[:, 1:] != obj[:, :-1])
    widths.append(np.sum(trimap == 3) / max(outline, 1) / np.mean(trimap.shape))  # Band width / image side.
    cut_by_edge += bool(obj[0].any() or obj[-1].any() or obj[:, 0].any() or obj[:, -1].any())
    colour_gap = np.linalg.norm(image[obj].mean(0) - image[background].mean(0))
    camouflaged += colour_gap < 40
    detail = high_frequency(image)
    textured += detail[obj[1:-1, 1:-1]].mean() > 1.5 * detail[background[1:-1, 1:-1]].mean()
  assert cut_by_edge >= 10  # Objects cut by the image edge are common.
  assert camouflaged >= 8  # Colour alone often does not separate object and background ...
  assert textured >= 50  # ... texture does, so the task stays learnable.
  assert 0.025 < np.median(widths) < 0.06  # A border band like the pet trimaps' (about 3.7% of the side).
