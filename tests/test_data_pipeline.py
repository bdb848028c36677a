"""Train/eval streams on the tiny offline dataset, and the real oxford_iiit_pet path under tfds' mock_data."""

import itertools
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from unet_jax import data, default_config

BATCH = 8  # Global batch; the tiny split has 64 train / 24 test examples, so an epoch is 8 steps.


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
  config = default_config.get_config().data
  config.name = "synthetic_pets/tiny"
  config.data_dir = str(tmp_path_factory.mktemp("tfds"))
  config.image_size = 32
  config.shuffle_buffer = 64
  return config


def take(config, steps, **kwargs):
  return list(itertools.islice(data.train_batches(config, global_batch_size=BATCH, **kwargs), steps))


def fingerprints(images: np.ndarray) -> list[bytes]:
  """Identifies examples across streams; flips map to the same key (flip is off where this is used)."""
  return [image.tobytes() for image in images]


@pytest.mark.parametrize("normalization,low,high", [("minus_one_to_one", -1, 1), ("zero_to_one", 0, 1)])
def test_train_batches_shapes_dtypes_and_ranges(tiny_config, normalization, low, high):
  config = tiny_config.copy_and_resolve_references()
  config.normalization = normalization
  batch = take(config, 1, seed=0)[0]
  assert set(batch) == {"image", "mask", "weight"}
  np.testing.assert_array_equal(batch["weight"], np.ones(BATCH, np.float32))
  assert batch["image"].shape == (BATCH, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["mask"].shape == (BATCH, 32, 32) and batch["mask"].dtype == np.int32
  assert low <= batch["image"].min() < batch["image"].max() <= high
  assert set(np.unique(batch["mask"])) == {0, 1, 2}


def test_flip_is_identical_on_image_and_mask(tiny_config):
  plain = tiny_config.copy_and_resolve_references()
  plain.augment.flip = False
  flipped_any = kept_any = False
  # Augmentation never changes which examples a step holds, so the two streams line up example by example.
  for augmented, original in zip(take(tiny_config, 4, seed=3), take(plain, 4, seed=3)):
    for image, mask, image0, mask0 in zip(augmented["image"], augmented["mask"], original["image"], original["mask"]):
      if np.array_equal(image, image0):
        assert np.array_equal(mask, mask0)
        kept_any = True
      else:
        np.testing.assert_array_equal(image, image0[:, ::-1])
        np.testing.assert_array_equal(mask, mask0[:, ::-1])
        flipped_any = True
  assert flipped_any and kept_any


def test_train_stream_is_deterministic_and_seeded(tiny_config):
  first, again, other = take(tiny_config, 3, seed=7), take(tiny_config, 3, seed=7), take(tiny_config, 3, seed=8)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
  assert not np.array_equal(first[0]["image"], other[0]["image"])


def kept_remainder(config, train_split: str = "train[:60]"):
  """The config keeping each epoch's partial batch; 60 examples are 7 batches of 8 and one of 4 (+ 4 padding)."""
  config = config.copy_and_resolve_references()
  config.train_split = train_split
  config.drop_remainder = False
  return config


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_resume_from_step_equals_uninterrupted_stream(tiny_config, drop_remainder):
  config = tiny_config if drop_remainder else kept_remainder(tiny_config)
  steps_per_epoch = data.steps_per_epoch(config, global_batch_size=BATCH)
  assert steps_per_epoch == 8
  uninterrupted = take(config, 2 * steps_per_epoch + 3, seed=5)
  for start in (1, steps_per_epoch - 1, steps_per_epoch, steps_per_epoch + 3, 2 * steps_per_epoch + 1):
    resumed = take(config, 2, seed=5, start_step=start)
    for offset, batch in enumerate(resumed):
      for name in ("image", "mask", "weight"):
        np.testing.assert_array_equal(batch[name], uninterrupted[start + offset][name])


def test_kept_remainder_ends_every_epoch_with_the_partial_batch_padded(tiny_config):
  config = kept_remainder(tiny_config)
  config.augment.flip = False
  steps_per_epoch = data.steps_per_epoch(config, global_batch_size=BATCH)
  batches = take(config, 2 * steps_per_epoch, seed=0)
  epochs = []
  for epoch in range(2):
    epoch_batches = batches[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch]
    weights = np.stack([batch["weight"] for batch in epoch_batches])
    assert weights[:-1].all() and weights[-1].tolist() == [1] * 4 + [0] * 4
    last = epoch_batches[-1]
    assert (last["image"][4:] == -1).all() and (last["mask"][4:] == 0).all()  # Zero pixels, normalised.
    epochs.append(sum((fingerprints(batch["image"][batch["weight"] > 0]) for batch in epoch_batches), []))
  assert len(set(epochs[0])) == len(epochs[0]) == 60  # Every example once per epoch, none lost to the remainder.
  assert set(epochs[0]) == set(epochs[1]) and epochs[0] != epochs[1]


def test_kept_remainder_keeps_uneven_process_shards_in_lockstep(tiny_config):
  """61 examples over 2 processes are shards of 31 and 30: both take ceil(31 / 4) = 8 steps per epoch, the smaller
  padded more, and together they see every example once."""
  config = kept_remainder(tiny_config, "train[:61]")
  config.augment.flip = False
  steps_per_epoch = data.steps_per_epoch(config, global_batch_size=BATCH, process_count=2)
  assert steps_per_epoch == 8
  seen = []
  for process in range(2):
    batches = take(config, steps_per_epoch + 1, seed=0, process_index=process, process_count=2)
    assert batches[-1]["weight"].all()  # The next epoch starts on the same step on both.
    epoch = batches[:-1]
    seen.append(sum((fingerprints(batch["image"][batch["weight"] > 0]) for batch in epoch), []))
    assert sum(batch["weight"].sum() for batch in epoch) == (31, 30)[process]
  assert not set(seen[0]) & set(seen[1]) and len(set(seen[0] + seen[1])) == 61


def test_each_epoch_sees_distinct_examples_in_a_new_order(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.augment.flip = False
  steps_per_epoch = data.num_examples(config, "train") // BATCH
  batches = take(config, 2 * steps_per_epoch, seed=0)
  epochs = [
    sum((fingerprints(b["image"]) for b in batches[e * steps_per_epoch : (e + 1) * steps_per_epoch]), [])
    for e in range(2)
  ]
  assert len(set(epochs[0])) == len(epochs[0]) == steps_per_epoch * BATCH
  assert set(epochs[0]) == set(epochs[1]) and epochs[0] != epochs[1]


def test_train_shards_are_disjoint_local_slices(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.augment.flip = False
  steps_per_epoch = data.num_examples(config, "train") // BATCH
  seen = []
  for process in range(2):
    batches = take(config, steps_per_epoch, seed=0, process_index=process, process_count=2)
    assert batches[0]["image"].shape[0] == BATCH // 2
    seen.append(set(sum((fingerprints(b["image"]) for b in batches), [])))
  assert len(seen[0]) == len(seen[1]) == steps_per_epoch * BATCH // 2
  assert not seen[0] & seen[1]


@pytest.mark.parametrize("process_count", [1, 3])
def test_eval_covers_every_example_exactly_once(tiny_config, process_count):
  reference = list(data.eval_batches(tiny_config, global_batch_size=24, process_count=1, process_index=0))
  everything = fingerprints(reference[0]["image"])
  assert len(set(everything)) == data.num_examples(tiny_config, "test") == 24
  seen, batch_counts = [], set()
  for process in range(process_count):
    batches = list(
      data.eval_batches(tiny_config, global_batch_size=3 * 5, process_index=process, process_count=process_count)
    )
    batch_counts.add(len(batches))
    for batch in batches:
      assert batch["weight"].dtype == np.float32 and batch["image"].shape[0] == 15 // process_count
      real = batch["weight"] == 1
      assert np.all(batch["image"][~real] == -1) and np.all(batch["weight"][~real] == 0)  # Zero pixels, normalised.
      seen += fingerprints(batch["image"][real])
  assert len(batch_counts) == 1  # Lockstep: every process yields as many batches.
  assert sorted(seen) == sorted(everything)


def test_eval_is_repeatable(tiny_config):
  first = list(data.eval_batches(tiny_config, global_batch_size=BATCH))
  second = list(data.eval_batches(tiny_config, global_batch_size=BATCH))
  assert len(first) == len(second) == 3
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a["image"], b["image"])


def test_eval_mask_size_gives_the_masks_of_that_size_beside_the_same_images(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.eval_mask_size = 16
  small = list(data.eval_batches(config, global_batch_size=BATCH))
  plain = list(data.eval_batches(tiny_config, global_batch_size=BATCH))
  config.image_size = 16  # A 16 px eval's masks: the same nearest-neighbour resize of the same trimaps.
  reference = list(data.eval_batches(config, global_batch_size=BATCH))
  for got, images, masks in zip(small, plain, reference, strict=True):
    np.testing.assert_array_equal(got["image"], images["image"])
    np.testing.assert_array_equal(got["mask"], masks["mask"])
    assert got["mask"].shape[1:] == (16, 16)


def test_optional_augmentations_keep_shapes_and_ranges(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.augment.scale_crop = config.augment.color = True
  batch = take(config, 1, seed=0)[0]
  assert batch["image"].shape == (BATCH, 32, 32, 3) and batch["mask"].dtype == np.int32
  assert -1 <= batch["image"].min() and batch["image"].max() <= 1
  assert set(np.unique(batch["mask"])) <= {0, 1, 2}
  plain = take(tiny_config, 1, seed=0)[0]
  assert not np.array_equal(batch["image"], plain["image"])


def test_public_preprocessing_is_what_the_eval_stream_does(tiny_config):
  raw = next(
    iter(tfds.as_numpy(tfds.builder(tiny_config.name, data_dir=tiny_config.data_dir).as_dataset(split="test")))
  )
  expected = next(data.eval_batches(tiny_config, global_batch_size=BATCH))["image"][0]
  resized = tf.function(data.resize_image)(raw["image"], 32)  # Works in graphs (the exported model) ...
  np.testing.assert_allclose(data.resize_image(raw["image"], 32), resized)  # ... and eagerly.
  np.testing.assert_allclose(data.normalize_image(resized.numpy(), "minus_one_to_one"), expected, atol=1e-6)
  np.testing.assert_allclose(data.normalize_image(jnp.asarray(resized), "zero_to_one"), (expected + 1) / 2, atol=1e-6)
  with pytest.raises(ValueError, match="normalization='bgr'"):
    data.normalize_image(resized, "bgr")


def test_global_batch_size_checks():
  devices = jax.device_count()
  data.check_global_batch_size(8 * devices)
  for bad in (0, -4) + ((devices + 1,) if devices > 1 else ()):
    with pytest.raises(
      ValueError, match=rf"batch_size={bad} .* multiple of the {devices} devices.*--config.batch_size="
    ):
      data.check_global_batch_size(bad)


def test_clear_errors_before_any_work(tiny_config):
  with pytest.raises(ValueError, match="does not divide among 3 processes"):
    data.train_batches(tiny_config, global_batch_size=8, seed=0, process_index=0, process_count=3)
  with pytest.raises(ValueError, match="fewer than one batch of 128.*drop_remainder=False"):
    data.train_batches(tiny_config, global_batch_size=128, seed=0)
  one_padded_batch = next(data.train_batches(kept_remainder(tiny_config), global_batch_size=128, seed=0))
  assert one_padded_batch["weight"].sum() == 60
  config = tiny_config.copy_and_resolve_references()
  config.normalization = "imagenet"
  with pytest.raises(ValueError, match="normalization='imagenet'.*minus_one_to_one"):
    data.train_batches(config, global_batch_size=8, seed=0)
  with pytest.raises(ValueError, match="Unknown split 'validation'.*eval_split"):
    data.eval_batches(tiny_config, global_batch_size=8, split="validation")
  config = tiny_config.copy_and_resolve_references()
  config.name = "no_such_dataset"
  with pytest.raises(ValueError, match="'no_such_dataset' is neither 'folder' nor a tfds dataset"):
    data.num_examples(config, "train")


def test_missing_oxford_iiit_pet_says_how_to_prepare_it(tmp_path, monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("the data pipeline must not touch the network")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  config = default_config.get_config().data
  config.data_dir = str(tmp_path)
  with pytest.raises(data.DatasetNotFoundError) as error:
    data.train_batches(config, global_batch_size=8, seed=0)
  message = str(error.value)
  assert "tfds build oxford_iiit_pet" in message and "--config.data.data_dir" in message
  assert "configs/synthetic.py" in message


# oxford_iiit_pet through tfds.testing.mock_data: real builder, split and process logic; fake records.
SPLIT_SIZES = {"train": 12, "test": 7}


def fake_pet(index: int) -> dict[str, np.ndarray]:
  """Image of one grey level (the index) and a trimap: pet on the left, a border column, background on the right."""
  h, w = 20 + index % 7, 24 + index % 5
  trimap = np.full((h, w, 1), 2, np.uint8)
  trimap[:, : w // 2] = 1
  trimap[:, w // 2] = 3
  return {"image": np.full((h, w, 3), index, np.uint8), "segmentation_mask": trimap}


def fake_as_dataset(builder, split, decoders=None, read_config=None, shuffle_files=False):
  del decoders, read_config, shuffle_files
  instruction = builder.info.splits[split].file_instructions[0]  # One file per split: skip = first index.
  indices = range(instruction.skip, instruction.skip + instruction.take)
  return tf.data.Dataset.from_generator(
    lambda: (fake_pet(i) for i in indices),
    output_signature={
      "image": tf.TensorSpec([None, None, 3], tf.uint8),
      "segmentation_mask": tf.TensorSpec([None, None, 1], tf.uint8),
    },
  )


@pytest.fixture
def mocked_pets(tmp_path):
  """Real oxford_iiit_pet metadata with small split sizes, so that the builder counts as prepared."""
  builder = tfds.builder("oxford_iiit_pet", data_dir=tmp_path)
  template = tfds.core.ShardedFileTemplate(
    data_dir=builder.data_path, dataset_name=builder.name, filetype_suffix="tfrecord", split="train"
  )
  builder.info.set_splits(
    tfds.core.SplitDict(
      [
        tfds.core.SplitInfo(
          name=name, shard_lengths=[size], num_bytes=0, filename_template=template.replace(split=name)
        )
        for name, size in SPLIT_SIZES.items()
      ]
    )
  )
  builder.data_path.mkdir(parents=True)
  builder.info.write_to_directory(builder.data_path)
  with tfds.testing.mock_data(
    as_dataset_fn=fake_as_dataset, data_dir=str(tmp_path), policy=tfds.testing.MockPolicy.USE_FILES
  ):
    config = default_config.get_config().data
    config.image_size = 16
    yield config


def test_oxford_iiit_pet_follows_the_tutorial(mocked_pets):
  assert data.num_examples(mocked_pets, "train") == 12
  batch = next(data.eval_batches(mocked_pets, global_batch_size=4, split="train"))
  levels = np.arange(4)
  np.testing.assert_allclose(
    batch["image"], np.broadcast_to(levels[:, None, None, None] / 127.5 - 1, (4, 16, 16, 3)), atol=1e-6
  )
  # Trimap {1, 2, 3} - 1: pet 0 on the left, background 1 on the right, the border column 2 between (nearest).
  assert np.all(batch["mask"][:, :, :7] == 0) and np.all(batch["mask"][:, :, 9:] == 1)
  assert set(np.unique(batch["mask"])) == {0, 1, 2}
  mocked_pets.normalization = "zero_to_one"
  batch = next(data.train_batches(mocked_pets, global_batch_size=4, seed=0))
  assert set(np.round(batch["image"][:, 0, 0, 0] * 255).astype(int)) <= set(range(12))


def test_oxford_iiit_pet_eval_shards_cover_the_split(mocked_pets):
  levels, counts = [], set()
  for process in range(2):
    batches = list(data.eval_batches(mocked_pets, global_batch_size=4, process_index=process, process_count=2))
    counts.add(len(batches))
    for batch in batches:
      levels += np.round((batch["image"][batch["weight"] == 1, 0, 0, 0] + 1) * 127.5).astype(int).tolist()
  assert counts == {2} and sorted(levels) == list(range(7))


@pytest.mark.parametrize("normalization", ["minus_one_to_one", "zero_to_one"])
def test_denormalize_to_uint8_inverts_normalize_image(normalization):
  pixels = np.arange(256, dtype=np.float32).reshape(16, 16, 1).repeat(3, axis=-1)
  normalized = data.normalize_image(pixels, normalization)
  np.testing.assert_array_equal(data.denormalize_to_uint8(normalized, normalization), pixels.astype(np.uint8))
  assert data.denormalize_to_uint8(np.float32([-5.0, 5.0]), normalization).tolist() == [0, 255]  # Clipped.
