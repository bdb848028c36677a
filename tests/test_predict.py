"""Prediction: images of every mode and size in, palette masks and overlays out, the CLI and its error paths."""

import dataclasses
import functools
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from inference_testlib import trained  # noqa: F401  (a fixture)
from train_testlib import REPO_ROOT, synthetic_data_dir, trainer_env  # noqa: F401  (a fixture)
import unet_jax
from unet_jax import data, image_io, predict, train, train_state

EXIF_ORIENTATION = 0x0112


def _halves(height: int, width: int, left: tuple, right: tuple) -> np.ndarray:
  image = np.zeros((height, width, 3), np.uint8)
  image[:, :width // 2], image[:, width // 2:] = left, right
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
  (tmp_path / "truncated.png").write_bytes(whole[:len(whole) // 2])
  (tmp_path / "notes.png").write_text("not an image")
  for name in ("truncated.png", "notes.png"):
    with pytest.raises(image_io.ImageReadError, match=name):
      image_io.read_image(tmp_path / name)


@pytest.mark.parametrize("image, want", [
    (np.array([[0, 65535], [257, 514]], np.uint16), [[0, 255], [1, 2]]),
    (np.array([[True, False]]), [[255, 0]]),
    (np.array([[0.0, 1.0, 0.5]], np.float32), [[0, 255, 128]]),
])
def test_to_rgb_scales_dtypes(image, want):
  np.testing.assert_array_equal(image_io.to_rgb(image), np.repeat(np.asarray(want, np.uint8)[..., None], 3, -1))


@pytest.mark.parametrize("image, message", [
    (np.full((4, 4, 3), 2.0, np.float32), r"\[0, 1\].*spans \[2, 2\]"),
    (np.zeros((4, 4, 2), np.uint8), r"shape \(4, 4, 2\)"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    (np.zeros((4, 4), np.int64), "dtype int64"),
])
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
      ("in/a.png", "a"), ("in/sub/b.jpg", "sub/b"), ("c.png", "c")]
  with pytest.raises(FileNotFoundError, match="missing.png"):
    image_io.find_images([tmp_path / "c.png", tmp_path / "missing.png"])
  with pytest.raises(ValueError, match="both write outputs named c"):
    image_io.check_unique_names(image_io.find_images([tmp_path / "c.png", tmp_path / "c.png"]))


@pytest.fixture(scope="module")
def predictor(trained) -> predict.Predictor:  # noqa: F811
  return unet_jax.Predictor.from_workdir(str(trained.workdir), batch_size=3)  # The package's public API.


def test_predictor_equals_the_trainers_predict_step(trained, predictor):  # noqa: F811
  # At the model's own size the resize is the identity: the mask must be the trainer's predict_step output.
  images = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), np.uint8)
  state = train_state.TrainState(step=0, params=predictor.variables["params"],
                                 batch_stats=predictor.variables["batch_stats"], opt_state=None, rng=None)
  normalized = data.normalize_image(images.astype(np.float32), trained.config.data.normalization)
  for flip_average, scales in ((False, (1.0,)), (True, (1.0,)), (True, (0.5, 1.0))):
    want = np.asarray(jax.jit(functools.partial(train.predict_step, model=predictor.model, flip_average=flip_average,
                                                scales=scales))(state, normalized))
    got = np.stack(list(dataclasses.replace(predictor, flip_average=flip_average, scales=scales).predict(images)))
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 1, "a constant mask would make this comparison meaningless"


def test_predictor_maps_any_image_back_to_its_size(predictor):
  rng = np.random.default_rng(2)
  images = [rng.integers(0, 256, (37, 90, 3), np.uint8), rng.integers(0, 256, (90, 37, 1), np.uint8),
            rng.integers(0, 256, (130, 200, 4), np.uint8), rng.integers(0, 65536, (64, 48), np.uint16),
            rng.random((5, 7)).astype(np.float32)]
  batched = list(predictor.predict(images))  # Batches of 3: one full, one padded.
  for image, mask in zip(images, batched, strict=True):
    assert mask.shape == image.shape[:2] and mask.dtype == np.int32
    assert 0 <= mask.min() and mask.max() < predictor.num_classes
    np.testing.assert_array_equal(mask, predictor(image))


def test_keep_size_pads_instead_of_resizing(trained, predictor):  # noqa: F811
  keep = predict.Predictor.from_workdir(str(trained.workdir), keep_size=True, batch_size=1)
  rng = np.random.default_rng(3)
  model_sized = rng.integers(0, 256, (64, 64, 3), np.uint8)
  np.testing.assert_array_equal(keep(model_sized), predictor(model_sized))
  odd = rng.integers(0, 256, (50, 97, 3), np.uint8)
  assert keep.model_input(odd).shape == (64, 128, 3)
  assert keep(odd).shape == (50, 97)


def test_workdir_errors_say_what_is_wrong(trained, tmp_path):  # noqa: F811
  with pytest.raises(FileNotFoundError, match="does not exist"):
    predict.Predictor.from_workdir(str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="config.json"):
    predict.Predictor.from_workdir(str(tmp_path))
  with pytest.raises(ValueError, match=r"no checkpoint for step 3; it has steps \[2, 4\]"):
    predict.Predictor.from_workdir(str(trained.workdir), checkpoint=3)
  with pytest.raises(ValueError, match="'first' is not 'latest', 'best' or a step number"):
    predict.Predictor.from_workdir(str(trained.workdir), checkpoint="first")
  untrained = tmp_path / "untrained"
  untrained.mkdir()
  (untrained / "config.json").write_text((trained.workdir / "config.json").read_text())
  with pytest.raises(FileNotFoundError, match="holds no checkpoint: train first"):
    predict.Predictor.from_workdir(str(untrained))


def test_cli_writes_masks_and_overlays_and_reports_bad_files(trained, predictor, tmp_path):  # noqa: F811
  inputs = tmp_path / "in"
  expected = write_odd_images(inputs / "odd")
  (inputs / "odd" / "corrupt.png").write_text("not an image")
  (inputs / "notes.txt").write_text("not picked up: no image extension")
  single = tmp_path / "single.bmp"
  Image.fromarray(np.full((33, 21, 3), 90, np.uint8)).save(single)
  output = tmp_path / "out"
  command = [sys.executable, "-m", "unet_jax.predict", f"--workdir={trained.workdir}", f"--output={output}",
             "--batch_size=3", str(inputs), str(single)]
  result = subprocess.run(command, env=trainer_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "1 file(s) could not be read" in result.stderr and "corrupt.png" in result.stderr
  written = sorted(path.relative_to(output).as_posix() for path in output.rglob("*.png"))
  names = sorted([f"odd/{pathlib.Path(name).stem}" for name in expected] + ["single"])
  assert written == sorted([f"{name}_mask.png" for name in names] + [f"{name}_overlay.png" for name in names])
  for name in expected:
    stem = pathlib.Path(name).stem
    with Image.open(output / "odd" / f"{stem}_mask.png") as mask, \
         Image.open(output / "odd" / f"{stem}_overlay.png") as overlay:
      image = image_io.read_image(inputs / "odd" / name)
      assert mask.mode == "P" and overlay.size == mask.size == (image.shape[1], image.shape[0])
      np.testing.assert_array_equal(np.asarray(mask), predictor(image))


def test_no_images_is_an_error_before_any_model_loads(tmp_path):
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  (tmp_path / "empty" / "sub" / "notes.txt").write_text("not an image")
  with pytest.raises(FileNotFoundError, match="No image files under .*empty"):
    predict.find_inputs([str(tmp_path / "empty")])
