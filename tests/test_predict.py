"""Prediction: images of every mode and size in, palette masks and overlays out, the CLI and its error paths."""

import dataclasses
import functools
import json
import logging
import math
import pathlib
import shutil
import subprocess
import sys
import types
import warnings

import jax
import numpy as np
import pytest
from inference_testlib import trained  # noqa: F401  (a fixture)
from PIL import Image, JpegImagePlugin
from train_testlib import REPO_ROOT, synthetic_data_dir, trainer_env  # noqa: F401  (a fixture)

import unet_jax
from unet_jax import checkpointing, data, errors, evaluation, image_io, predict, train_state

EXIF_ORIENTATION = 0x0112


def _halves(height: int, width: int, left: tuple, right: tuple) -> np.ndarray:
  image = np.zeros((height, width, 3), np.uint8)
  image[:, : width // 2], image[:, width // 2 :] = left, right
  return image


RED, BLUE = (255, 0, 0), (0, 0, 255)


def write_odd_images(folder: pathlib.Path) -> dict[str, np.ndarray]:
  """One file per awkward mode; returns what read_image must give for each (exact, or JPEG-close for .jpg)."""
  folder.mkdir(parents=True, exist_ok=True)
  expected = {}
  rgb = np.random.default_rng(0).integers(0, 256, (45, 70, 3), np.uint8)
  alpha = np.full((45, 70, 1), 7, np.uint8)  # Nearly transparent: the colours must survive untouched.
  Image.fromarray(np.concatenate([rgb, alpha], -1)).save(folder / "rgba.png")
  expected["rgba.png"] = rgb
  gray = rgb[..., 0]
  Image.fromarray(gray).save(folder / "gray.png")
  expected["gray.png"] = np.repeat(gray[..., None], 3, -1)
  ids = (np.arange(33 * 50).reshape(33, 50) % 4).astype(np.uint8)
  colors = np.array([[10, 20, 30], [200, 0, 0], [0, 200, 0], [0, 0, 200]], np.uint8)
  palette_image = Image.fromarray(ids)
  palette_image.putpalette(colors.reshape(-1).tolist())
  palette_image.save(folder / "palette.png")
  expected["palette.png"] = colors[ids]
  wide = (np.arange(40 * 31).reshape(40, 31) * 50 % 65536).astype(np.uint16)
  Image.fromarray(wide).save(folder / "sixteen_bit.png")  # 16-bit grayscale PNG.
  expected["sixteen_bit.png"] = np.repeat((wide // 257).astype(np.uint8)[..., None], 3, -1)
  # Stored 40 wide x 20 high, red left and blue right; orientation 6 says "rotate 90 degrees clockwise to view".
  exif = Image.Exif()
  exif[EXIF_ORIENTATION] = 6
  Image.fromarray(_halves(20, 40, RED, BLUE)).save(folder / "phone.jpg", exif=exif, quality=95)
  upright = np.zeros((40, 20, 3), np.uint8)
  upright[:20], upright[20:] = RED, BLUE
  expected["phone.jpg"] = upright
  return expected


def test_read_image_every_mode(tmp_path):
  for name, want in write_odd_images(tmp_path).items():
    got = image_io.read_image(tmp_path / name)
    assert got.dtype == np.uint8 and got.shape == want.shape, name
    if name.endswith(".jpg"):
      # JPEG blurs the red/blue edge; away from it the colours hold.
      np.testing.assert_allclose(got[:15].astype(int), want[:15], atol=40, err_msg=name)
      np.testing.assert_allclose(got[25:].astype(int), want[25:], atol=40, err_msg=name)
    else:
      np.testing.assert_array_equal(got, want, err_msg=name)


def test_unreadable_files_are_errors_that_name_them(tmp_path):
  noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)  # Incompressible: half the file is cut.
  Image.fromarray(noise).save(tmp_path / "whole.png")
  whole = (tmp_path / "whole.png").read_bytes()
  (tmp_path / "truncated.png").write_bytes(whole[: len(whole) // 2])
  (tmp_path / "notes.png").write_text("not an image")
  for name in ("truncated.png", "notes.png"):
    with pytest.raises(image_io.ImageReadError, match=name) as raised:
      image_io.read_image(tmp_path / name)
    assert isinstance(raised.value, errors.UserError) and isinstance(raised.value, ValueError)


def test_an_animation_warns_that_only_its_first_frame_is_predicted(tmp_path, caplog):
  frames = [np.full((10, 12, 3), value, np.uint8) for value in (40, 200)]
  Image.fromarray(frames[0]).save(tmp_path / "anim.gif", save_all=True, append_images=[Image.fromarray(frames[1])])
  Image.fromarray(frames[1]).save(tmp_path / "still.gif")
  with caplog.at_level(logging.WARNING, logger="absl"):  # absl logs through the Python logger "absl".
    first = image_io.read_image(tmp_path / "anim.gif")
    still = image_io.read_image(tmp_path / "still.gif")
  assert abs(int(first.mean()) - 40) <= 2 and abs(int(still.mean()) - 200) <= 2  # GIF quantises the colours.
  assert [record.getMessage() for record in caplog.records] == [
    f"{tmp_path / 'anim.gif'} holds 2 frames (an animation or a multi-page file): predicting its first frame of 2; "
    f"save the others as separate images to predict them."
  ]


@pytest.mark.parametrize(
  "height, width, limit, want",
  [
    (10000, 10000, 4096 * 4096, (4096, 4096)),
    (3000, 4000, 4096 * 4096, (3000, 4000)),  # Within the limit: unchanged.
    (200, 150, 64 * 48, (64, 48)),
    (1, 10**6, 100, (1, 100)),  # A side floors to 0: it keeps 1 and the other side the rest.
    (10**6, 1, 100, (100, 1)),
  ],
)
def test_bounded_size_keeps_the_aspect_within_the_limit(height, width, limit, want):
  assert image_io.bounded_size(height, width, limit) == want
  assert want[0] * want[1] <= limit


def test_an_image_over_the_limit_is_read_downscaled_upright_with_a_warning(tmp_path, caplog):
  limit = 300
  with caplog.at_level(logging.WARNING, logger="absl"):
    for name, want in write_odd_images(tmp_path).items():
      got, size = image_io.read_image_and_size(tmp_path / name, max_pixels=limit)
      assert size == want.shape[:2], name
      assert got.shape == (*image_io.bounded_size(*want.shape[:2], limit), 3) and got.dtype == np.uint8, name
      # The exact downscale of the expected image, within PIL's rounding (and JPEG's, away from the edge).
      resized = np.asarray(Image.fromarray(want).resize(got.shape[1::-1], Image.Resampling.BILINEAR))
      if name.endswith(".jpg"):  # Upright: red above, blue below.
        np.testing.assert_allclose(got[: got.shape[0] // 3].astype(int), resized[: got.shape[0] // 3], atol=40)
        np.testing.assert_allclose(got[-got.shape[0] // 3 :].astype(int), resized[-got.shape[0] // 3 :], atol=40)
      else:
        np.testing.assert_allclose(got.astype(int), resized, atol=2, err_msg=name)
  messages = [record.getMessage() for record in caplog.records]
  assert len(messages) == 5
  assert f"{tmp_path / 'phone.jpg'} is 20x40 = 800 pixels, over the limit of 300" in messages[-1]
  assert messages[-1].endswith("read downscaled to 12x24, aspect ratio kept.")
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="absl"):
    np.testing.assert_array_equal(
      image_io.read_image(tmp_path / "gray.png", max_pixels=math.inf),
      image_io.read_image(tmp_path / "gray.png", max_pixels=45 * 70),
    )
  assert not caplog.records


def test_a_jpeg_over_the_limit_decodes_at_a_reduced_scale(tmp_path, monkeypatch):
  image = np.zeros((400, 480, 3), np.uint8)
  image[:200] = RED
  Image.fromarray(image).save(tmp_path / "large.jpg", quality=95)
  monkeypatch.setattr(image_io, "MAX_PIXELS", 100 * 120)  # The default is read when called.
  decoded_sizes = []
  draft = JpegImagePlugin.JpegImageFile.draft

  def spy(self, mode, size):
    result = draft(self, mode, size)
    decoded_sizes.append(self.size)
    return result

  monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
  got, size = image_io.read_image_and_size(tmp_path / "large.jpg")
  assert size == (400, 480) and got.shape == (100, 120, 3)
  assert decoded_sizes == [(120, 100)]  # Decoded at 1/4 scale, 120x100 pixels, instead of 480x400.
  np.testing.assert_allclose(got[5:45].astype(int), np.broadcast_to(RED, (40, 120, 3)), atol=10)


def test_pils_decompression_bomb_limits_stay_sensible(tmp_path, monkeypatch):
  Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "bomb.png")  # 2000 pixels.
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # Downscaled, the image gets the module's own warning, not PIL's.
    assert image_io.read_image(tmp_path / "bomb.png", max_pixels=1000).shape == (28, 35, 3)
  with pytest.warns(Image.DecompressionBombWarning):  # Read whole, PIL's warning stands.
    image_io.read_image(tmp_path / "bomb.png", max_pixels=math.inf)
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 900)  # Over twice the limit: PIL refuses it, and the error says why.
  with pytest.raises(image_io.ImageReadError, match=r"bomb\.png .*decompression-bomb guard: downscale the file"):
    image_io.read_image(tmp_path / "bomb.png", max_pixels=1000)


def test_upscale_mask_repeats_the_nearest_class_id():
  mask = np.array([[0, 1], [2, 3]], np.int32)
  np.testing.assert_array_equal(image_io.upscale_mask(mask, (4, 6)), np.repeat(np.repeat(mask, 2, 0), 3, 1))
  assert image_io.upscale_mask(mask.astype(np.uint8), (5, 3)).dtype == np.uint8


@pytest.mark.parametrize(
  "image, want",
  [
    (np.array([[0, 65535], [257, 514]], np.uint16), [[0, 255], [1, 2]]),
    (np.array([[True, False]]), [[255, 0]]),
    (np.array([[0.0, 1.0, 0.5]], np.float32), [[0, 255, 128]]),
  ],
)
def test_to_rgb_scales_dtypes(image, want):
  np.testing.assert_array_equal(image_io.to_rgb(image), np.repeat(np.asarray(want, np.uint8)[..., None], 3, -1))


@pytest.mark.parametrize(
  "image, message",
  [
    (np.full((4, 4, 3), 2.0, np.float32), r"\[0, 1\].*spans \[2, 2\]"),
    (np.zeros((4, 4, 2), np.uint8), r"shape \(4, 4, 2\)"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    (np.zeros((4, 4), np.int64), "dtype int64"),
  ],
)
def test_to_rgb_rejects_what_it_cannot_read(image, message):
  with pytest.raises(ValueError, match=message):
    image_io.to_rgb(image)


def test_mask_png_holds_class_ids_and_the_figure_colours(tmp_path):
  mask = np.arange(12).reshape(3, 4) % 3
  colors = image_io.palette(3)
  image_io.save_mask(tmp_path / "mask.png", mask, colors)
  with Image.open(tmp_path / "mask.png") as saved:
    assert saved.mode == "P"
    np.testing.assert_array_equal(np.asarray(saved), mask)
    np.testing.assert_array_equal(np.asarray(saved.convert("RGB")), colors[mask])
  assert len({tuple(color) for color in colors}) == 3


def test_find_images_walks_folders_and_refuses_clashes(tmp_path):
  (tmp_path / "in" / "sub").mkdir(parents=True)
  for name in ("in/a.png", "in/sub/b.jpg", "in/readme.txt", "c.png"):
    (tmp_path / name).touch()
  found = image_io.find_images([tmp_path / "in", tmp_path / "c.png"])
  assert [(file.relative_to(tmp_path).as_posix(), name.as_posix()) for file, name in found] == [
    ("in/a.png", "a"),
    ("in/sub/b.jpg", "sub/b"),
    ("c.png", "c"),
  ]
  with pytest.raises(errors.InputNotFoundError, match="missing.png") as missing:
    image_io.find_images([tmp_path / "c.png", tmp_path / "missing.png"])
  assert isinstance(missing.value, FileNotFoundError)
  with pytest.raises(errors.ConfigError, match="both write outputs named c") as clash:
    image_io.check_unique_names(image_io.find_images([tmp_path / "c.png", tmp_path / "c.png"]))
  assert isinstance(clash.value, ValueError)


@pytest.fixture(scope="module")
def predictor(trained) -> predict.Predictor:  # noqa: F811
  return unet_jax.Predictor.from_workdir(str(trained.workdir), batch_size=3)  # The package's public API.


def test_predictor_equals_the_evaluators_predictions(trained, predictor):  # noqa: F811
  # At the model's own size the resize is the identity: the mask must be the eval step's predicted mask.
  images = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), np.uint8)
  state = train_state.TrainState(
    step=0,
    params=predictor.variables["params"],
    batch_stats=predictor.variables["batch_stats"],
    opt_state=None,
    rng=None,
  )
  batch = {
    "image": data.normalize_image(images.astype(np.float32), trained.config.data.normalization),
    "mask": np.zeros(images.shape[:3], np.int32),
    "weight": np.ones(len(images), np.float32),
  }
  for flip_average, scales in ((False, (1.0,)), (True, (1.0,)), (True, (0.5, 1.0))):
    step = functools.partial(
      evaluation.eval_step,
      model=predictor.model,
      num_classes=predictor.num_classes,
      class_weights=(),
      dice_weight=0.0,
      flip_average=flip_average,
      scales=scales,
    )
    want = np.asarray(jax.jit(step)(state, batch)["predictions"])
    got = np.stack(list(dataclasses.replace(predictor, flip_average=flip_average, scales=scales).predict(images)))
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 1, "a constant mask would make this comparison meaningless"


def test_predictor_maps_any_image_back_to_its_size(predictor):
  rng = np.random.default_rng(2)
  images = [
    rng.integers(0, 256, (37, 90, 3), np.uint8),
    rng.integers(0, 256, (90, 37, 1), np.uint8),
    rng.integers(0, 256, (130, 200, 4), np.uint8),
    rng.integers(0, 65536, (64, 48), np.uint16),
    rng.random((5, 7)).astype(np.float32),
  ]
  batched = list(predictor.predict(images))  # Batches of 3: one full, one padded.
  for image, mask in zip(images, batched, strict=True):
    assert mask.shape == image.shape[:2] and mask.dtype == np.int32
    assert 0 <= mask.min() and mask.max() < predictor.num_classes
    np.testing.assert_array_equal(mask, predictor(image))


def test_from_run_places_the_variables_on_this_processs_device(trained, monkeypatch):  # noqa: F811
  run = checkpointing.load_run(str(trained.workdir))
  # Another process's devices cannot be addressed: jax.devices() must not be where the variables go.
  monkeypatch.setattr(jax, "devices", lambda *args: pytest.fail("from_run used jax.devices(), not jax.local_devices()"))
  local = []
  local_devices = jax.local_devices
  monkeypatch.setattr(jax, "local_devices", lambda *args, **kwargs: local.append(1) or local_devices(*args, **kwargs))
  variables = predict.Predictor.from_run(run).variables
  assert local, "from_run did not ask for this process's devices"
  assert {device for leaf in jax.tree.leaves(variables) for device in leaf.devices()} == {local_devices()[0]}


def test_a_huge_array_gets_its_mask_computed_smaller_and_upscaled(predictor, monkeypatch, caplog):
  monkeypatch.setattr(image_io, "MAX_PIXELS", 40 * 30)
  image = np.random.default_rng(4).integers(0, 256, (90, 120, 3), np.uint8)
  with caplog.at_level(logging.WARNING, logger="absl"):
    mask = predictor(image)
  assert mask.shape == (90, 120) and mask.dtype == np.int32
  logits = predict._jitted_model_logits(
    predictor.model,
    predictor.normalization,
    predictor.flip_average,
    predictor.scales,
    predictor.variables,
    predictor.model_input(image)[None],
  )
  reduced = predict.masks_from_logits(np.asarray(logits), (30, 40)).numpy()[0]
  np.testing.assert_array_equal(mask, image_io.upscale_mask(reduced, (90, 120)))
  assert [record.getMessage() for record in caplog.records] == [
    "An image of 120x90 = 10,800 pixels is over image_io.MAX_PIXELS (1,200): its mask is computed at 40x30 and "
    "upscaled (nearest neighbour)."
  ]


def test_a_file_over_the_limit_is_predicted_downscaled_and_its_mask_written_at_its_size(
  predictor, tmp_path, monkeypatch, caplog
):
  image = np.random.default_rng(5).integers(0, 256, (150, 200, 3), np.uint8)
  Image.fromarray(image).save(tmp_path / "large.png")
  Image.fromarray(image[:40, :50]).save(tmp_path / "small.png")
  monkeypatch.setattr(image_io, "MAX_PIXELS", 64 * 48)
  with caplog.at_level(logging.WARNING, logger="absl"):
    failures = predict.predict_files(predictor, predict.find_inputs([str(tmp_path)]), str(tmp_path / "out"))
  assert not failures
  reduced = image_io.read_image(tmp_path / "large.png")
  assert reduced.shape == (48, 64, 3)
  with (
    Image.open(tmp_path / "out" / "large_mask.png") as mask,
    Image.open(tmp_path / "out" / "large_overlay.png") as overlay,
  ):
    assert mask.mode == "P" and mask.size == (200, 150) and overlay.size == (64, 48)
    np.testing.assert_array_equal(np.asarray(mask), image_io.upscale_mask(predictor(reduced), (150, 200)))
  with Image.open(tmp_path / "out" / "small_mask.png") as mask:
    np.testing.assert_array_equal(np.asarray(mask), predictor(image[:40, :50]))
  messages = [record.getMessage() for record in caplog.records]
  assert len(messages) == 2 and messages[0] == messages[1]  # predict_files' read, then the test's own.
  assert messages[0] == (
    f"{tmp_path / 'large.png'} is 200x150 = 30,000 pixels, over the limit of 3,072 "
    f"(unet_jax.image_io.MAX_PIXELS): read downscaled to 64x48, aspect ratio kept."
  )


def test_keep_size_refuses_an_image_over_the_limit(trained, predictor, tmp_path, monkeypatch):  # noqa: F811
  keep = predict.Predictor.from_workdir(str(trained.workdir), keep_size=True, batch_size=3)
  monkeypatch.setattr(image_io, "MAX_PIXELS", 64 * 64)
  too_large = np.zeros((50, 97, 3), np.uint8)  # 4850 pixels.
  message = r"An image of 97x50 = 4,850 pixels is over the 4,096 that keep_size .* use keep_size=False"
  with pytest.raises(errors.ConfigError, match=message):
    keep(too_large)
  with pytest.raises(errors.ConfigError, match=message):
    list(keep.predict([too_large]))
  Image.fromarray(too_large).save(tmp_path / "large.png")
  with pytest.raises(errors.ConfigError, match=r"large\.png of 97x50 = 4,850 pixels .* use keep_size=False"):
    predict.predict_files(keep, predict.find_inputs([str(tmp_path / "large.png")]), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
  assert predictor(too_large).shape == (50, 97)  # Without keep_size, the limit only shrinks what is computed.


def test_keep_size_batches_hold_at_most_the_pixel_limit(trained, monkeypatch):  # noqa: F811
  keep = predict.Predictor.from_workdir(str(trained.workdir), keep_size=True, batch_size=3)
  images = list(np.random.default_rng(6).integers(0, 256, (3, 40, 60, 3), np.uint8))  # Padded: 64x64 each.
  want = [keep(image) for image in images]
  monkeypatch.setattr(image_io, "MAX_PIXELS", 2 * 64 * 64 + 100)  # Two padded images a batch, not three.
  batches = []
  jitted = predict._jitted_model_logits
  monkeypatch.setattr(predict, "_jitted_model_logits", lambda *args: batches.append(args[-1].shape) or jitted(*args))
  got = list(keep.predict(images))
  assert batches == [(2, 64, 64, 3), (2, 64, 64, 3)]  # The last one padded, as every batch of its shape.
  for mask, expected in zip(got, want, strict=True):
    np.testing.assert_array_equal(mask, expected)


def test_keep_size_pads_instead_of_resizing(trained, predictor):  # noqa: F811
  keep = predict.Predictor.from_workdir(str(trained.workdir), keep_size=True, batch_size=1)
  rng = np.random.default_rng(3)
  model_sized = rng.integers(0, 256, (64, 64, 3), np.uint8)
  np.testing.assert_array_equal(keep(model_sized), predictor(model_sized))
  odd = rng.integers(0, 256, (50, 97, 3), np.uint8)
  assert keep.model_input(odd).shape == (64, 128, 3)
  assert keep(odd).shape == (50, 97)


def test_workdir_errors_say_what_is_wrong(trained, tmp_path):  # noqa: F811
  with pytest.raises(errors.InputNotFoundError, match="does not exist"):
    predict.Predictor.from_workdir(str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="config.json"):
    predict.Predictor.from_workdir(str(tmp_path))
  with pytest.raises(errors.ConfigError, match=r"no checkpoint for step 3; it has steps \[2, 4\]: pass one of"):
    predict.Predictor.from_workdir(str(trained.workdir), checkpoint=3)
  with pytest.raises(errors.ConfigError, match="'first' is not 'latest', 'best' or a step number"):
    predict.Predictor.from_workdir(str(trained.workdir), checkpoint="first")
  with pytest.raises(errors.ConfigError, match="batch_size=0 must be at least 1"):
    predict.Predictor.from_workdir(str(trained.workdir), batch_size=0)
  untrained = tmp_path / "untrained"
  untrained.mkdir()
  (untrained / "config.json").write_text((trained.workdir / "config.json").read_text())
  with pytest.raises(errors.InputNotFoundError) as raised:
    predict.Predictor.from_workdir(str(untrained))
  assert str(raised.value) == (
    f"{untrained / 'checkpoints'} holds no checkpoint: train first: python -m unet_jax.train --config CONFIG "
    f"--workdir {untrained}, with CONFIG the config file (and --config.* overrides) the run there was started with, "
    f"which its config.json records, e.g. configs/synthetic.py; or point --workdir at a run that saved one."
  )
  assert isinstance(raised.value, FileNotFoundError)


def test_no_checkpoint_and_no_config_json_says_to_train_with_a_config(tmp_path):
  manager = types.SimpleNamespace(all_steps=lambda: [], directory=tmp_path / "checkpoints")
  with pytest.raises(errors.InputNotFoundError) as raised:
    checkpointing.resolve_step(manager, "latest", str(tmp_path))
  assert str(raised.value) == (
    f"{tmp_path / 'checkpoints'} holds no checkpoint: train first: python -m unet_jax.train --config CONFIG "
    f"--workdir {tmp_path}, with CONFIG a config file, e.g. configs/synthetic.py; or point --workdir at a run that "
    f"saved one."
  )


def test_cli_writes_masks_and_overlays_and_reports_bad_files(trained, predictor, tmp_path):  # noqa: F811
  inputs = tmp_path / "in"
  expected = write_odd_images(inputs / "odd")
  (inputs / "odd" / "corrupt.png").write_text("not an image")
  (inputs / "notes.txt").write_text("not picked up: no image extension")
  single = tmp_path / "single.bmp"
  Image.fromarray(np.full((33, 21, 3), 90, np.uint8)).save(single)
  output = tmp_path / "out"
  command = [
    sys.executable,
    "-m",
    "unet_jax.predict",
    f"--workdir={trained.workdir}",
    f"--output={output}",
    "--batch_size=3",
    str(inputs),
    str(single),
  ]
  result = subprocess.run(command, env=trainer_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "1 file(s) could not be read" in result.stderr and "corrupt.png" in result.stderr
  written = sorted(path.relative_to(output).as_posix() for path in output.rglob("*.png"))
  names = sorted([f"odd/{pathlib.Path(name).stem}" for name in expected] + ["single"])
  assert written == sorted([f"{name}_mask.png" for name in names] + [f"{name}_overlay.png" for name in names])
  for name in expected:
    stem = pathlib.Path(name).stem
    with (
      Image.open(output / "odd" / f"{stem}_mask.png") as mask,
      Image.open(output / "odd" / f"{stem}_overlay.png") as overlay,
    ):
      image = image_io.read_image(inputs / "odd" / name)
      assert mask.mode == "P" and overlay.size == mask.size == (image.shape[1], image.shape[0])
      np.testing.assert_array_equal(np.asarray(mask), predictor(image))


def test_predict_and_evaluate_keep_their_programs_in_the_runs_compilation_cache(trained, tmp_path):  # noqa: F811
  """A second predict or evaluate of a run loads its compiled programs, as a second train run of its config does."""
  workdir = tmp_path / "run"
  shutil.copytree(trained.workdir, workdir)
  config = json.loads((workdir / checkpointing.CONFIG_FILE).read_text())
  (workdir / checkpointing.CONFIG_FILE).write_text(
    json.dumps({**config, "compilation_cache_dir": str(tmp_path / "xla")})
  )
  image = tmp_path / "image.png"
  Image.fromarray(np.full((40, 30, 3), 90, np.uint8)).save(image)
  env = {name: value for name, value in trainer_env().items() if name != "JAX_COMPILATION_CACHE_DIR"}
  commands = {
    "predict": [f"--workdir={workdir}", f"--output={tmp_path / 'out'}", str(image)],
    "evaluate": [f"--workdir={workdir}", "--config.data.eval_split=test[:12]"],
  }
  programs = []
  for command, arguments in commands.items():
    result = subprocess.run(
      [sys.executable, "-m", f"unet_jax.{command}", *arguments],
      env=env,
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    programs.append(len(list((tmp_path / "xla").glob("*"))))
  assert 0 < programs[0] < programs[1], programs  # Predict's programs, then the eval step's too.


def test_no_images_is_an_error_before_any_model_loads(tmp_path):
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  (tmp_path / "empty" / "sub" / "notes.txt").write_text("not an image")
  with pytest.raises(errors.InputNotFoundError, match="No image files under .*empty") as raised:
    predict.find_inputs([str(tmp_path / "empty")])
  assert isinstance(raised.value, FileNotFoundError)
