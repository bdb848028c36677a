"""The folder dataset on generated files (every image format, palette masks, bad files) and on ../shared data."""

import importlib.util
import itertools
import logging
import pathlib
import re

import ml_collections
import numpy as np
import pytest
from PIL import Image

from unet_jax import data, default_config, errors, image_io
from unet_jax.data import folder

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
COLOURS = np.array([(200, 30, 30), (30, 200, 30), (30, 30, 200)], np.uint8)  # Class c is drawn in COLOURS[c].
GREYS = np.array([60, 120, 180], np.uint8)  # ... or in GREYS[c] for the grayscale image.
RAW = np.array([10, 20, 30], np.uint8)  # Raw mask values of classes 0, 1, 2.
VALUE_MAP = "10:0,20:1,30:2"
H, W = 24, 36
FORMATS = {"s00": "png", "s01": "jpeg", "s02": "gif", "s03": "rgba", "s04": "grey"}  # s05..s09: png.


def bands(h: int = H, w: int = W) -> np.ndarray:
  """Class ids in three vertical bands (left 0, middle 1, right 2)."""
  return np.broadcast_to(np.arange(w) * 3 // w, (h, w))


def write_pair(root: pathlib.Path, stem: str, kind: str = "png", mask_size: tuple[int, int] = (H, W)) -> None:
  classes = bands()
  colour, grey = COLOURS[classes], GREYS[classes]
  colour[:2, :2] = grey[:2, :2] = 20 * int(stem[1:]) + 5  # A corner that tells the examples apart.
  images, masks = root / "images", root / "masks"
  images.mkdir(parents=True, exist_ok=True)
  masks.mkdir(parents=True, exist_ok=True)
  if kind == "jpeg":
    Image.fromarray(colour).save(images / f"{stem}.jpg", quality=95)
  elif kind == "gif":  # A GIF behind a .jpg name, like Abyssinian_34 in the pets release.
    Image.fromarray(colour).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(images / f"{stem}.jpg", "GIF")
  elif kind == "rgba":
    alpha = np.random.default_rng(0).integers(0, 256, (H, W, 1), dtype=np.uint8)
    Image.fromarray(np.concatenate([colour, alpha], -1)).save(images / f"{stem}.png")
  elif kind == "grey":
    Image.fromarray(grey).save(images / f"{stem}.png")
  else:
    Image.fromarray(colour).save(images / f"{stem}.png")
  raw = RAW[bands(*mask_size)]
  mask = Image.fromarray(raw)
  if int(stem[1:]) % 2:  # Palette masks: the indices are the raw values, whatever colours the palette holds.
    mask = mask.convert("P")
    mask.putpalette(np.random.default_rng(1).integers(0, 256, 768, dtype=np.uint8).tobytes())
    mask.frombytes(raw.tobytes())
  mask.save(masks / f"{stem}.png")


@pytest.fixture
def root(tmp_path) -> pathlib.Path:
  for i in range(10):
    write_pair(tmp_path, f"s{i:02d}", FORMATS.get(f"s{i:02d}", "png"))
  return tmp_path


def folder_config(root: pathlib.Path | str, **folder_fields) -> ml_collections.ConfigDict:
  config = default_config.get_config().data
  config.name = "folder"
  config.image_size = 24
  config.shuffle_buffer = 16
  config.folder.root = str(root)
  config.folder.mask_value_map = VALUE_MAP
  config.folder.update(folder_fields)
  return config


def eval_all(config, split="all", **kwargs) -> tuple[np.ndarray, np.ndarray]:
  batches = list(data.eval_batches(config, global_batch_size=10, split=split, **kwargs))
  real = np.concatenate([b["weight"] for b in batches]) == 1
  return (np.concatenate([b["image"] for b in batches])[real], np.concatenate([b["mask"] for b in batches])[real])


def test_every_image_format_decodes_to_rgb_and_masks_map_to_classes(root):
  images, masks = eval_all(folder_config(root))
  assert images.shape == (10, 24, 24, 3) and masks.shape == (10, 24, 24) and masks.dtype == np.int32
  pixels = np.round((images + 1) * 127.5)
  centres = [4, 12, 20]  # Band centres after the 36 -> 24 px resize.
  for stem, image, mask in zip(sorted(f"s{i:02d}" for i in range(10)), pixels, masks):
    np.testing.assert_array_equal(mask[:, centres], np.broadcast_to([0, 1, 2], (24, 3)))  # L and palette masks.
    expected = GREYS[:, None].repeat(3, 1) if FORMATS.get(stem) == "grey" else COLOURS  # Grey replicated to RGB.
    tolerance = 8 if FORMATS.get(stem) == "jpeg" else 0
    np.testing.assert_allclose(image[12, centres], expected, atol=tolerance, err_msg=stem)


def test_flip_and_zoom_keep_image_and_mask_aligned(root):
  config = folder_config(root)
  config.augment.scale_crop = True
  flipped = checked = 0
  for batch in itertools.islice(data.train_batches(config, global_batch_size=4, seed=0), 6):
    pixels = np.round((batch["image"] + 1) * 127.5)
    for image, mask in zip(pixels, batch["mask"]):
      flipped += mask[0, 0] == 2
      for class_id, colour in enumerate(COLOURS):  # Where a pixel is exactly a class colour, the mask agrees.
        exact = np.all(np.abs(image - colour) <= 1, axis=-1)
        if exact.sum() > 20:
          assert np.mean(mask[exact] == class_id) > 0.97
          checked += 1
  assert flipped > 0 and checked > 30


def test_splits_by_seeded_fraction_are_disjoint_and_complete(root):
  config = folder_config(root, test_fraction=0.3, split_seed=1)
  train, test = folder.split_pairs(config, "train"), folder.split_pairs(config, "test")
  assert len(train) == 7 and len(test) == 3
  assert sorted(p.stem for p in train + test) == [f"s{i:02d}" for i in range(10)]
  assert folder.split_pairs(config, "test") == test
  assert [p.stem for p in train] == sorted(p.stem for p in train)
  other = folder_config(root, test_fraction=0.3, split_seed=2)
  assert folder.split_pairs(other, "test") != test


def test_splits_by_list_files(root):
  (root / "train.txt").write_text("# stem class species breed\ns01 1 1 1\ns05 1 1 1\ns02 2 2 1\n")
  (root / "test.txt").write_text("s03 1 1 1\n")
  config = folder_config(root, train_list="train.txt", test_list="test.txt")
  assert [p.stem for p in folder.split_pairs(config, "train")] == ["s01", "s02", "s05"]
  assert [p.stem for p in folder.split_pairs(config, "test")] == ["s03"]
  only_train = folder_config(root, train_list="train.txt")
  assert data.num_examples(only_train, "test") == 7  # Everything the train list leaves out.
  (root / "train.txt").write_text("s01\nnope\n")
  with pytest.raises(ValueError, match=r"1 stem\(s\) of .*train.txt have no usable image/mask pair.*'nope'"):
    data.num_examples(folder_config(root, train_list="train.txt"), "train")
  assert data.num_examples(folder_config(root, train_list="train.txt", skip_bad_files=True), "train") == 1


def test_process_shards_cover_the_split_once(root):
  config = folder_config(root)
  seen, counts = [], set()
  for process in range(3):
    batches = list(data.eval_batches(config, global_batch_size=6, split="all", process_index=process, process_count=3))
    counts.add(len(batches))
    seen += [image.tobytes() for batch in batches for image in batch["image"][batch["weight"] == 1]]
  everything = [image.tobytes() for image in eval_all(config)[0]]
  assert len(set(everything)) == 10
  assert counts == {2} and sorted(seen) == sorted(everything)


@pytest.mark.parametrize(
  "text,expected",
  [
    ("1:0,2:1,3:2", {1: 0, 2: 1, 3: 2}),
    ("{0: 0, 255: 1}", {0: 0, 255: 1}),
    ("", {}),
    (" 0:1 , 255:0 ", {0: 1, 255: 0}),
  ],
)
def test_parse_value_map(text, expected):
  assert folder.parse_value_map(text) == expected


@pytest.mark.parametrize("text", ["1=0", "1:0,1:2", "0:300"])
def test_parse_value_map_rejects_bad_maps(text):
  with pytest.raises(ValueError, match=re.escape(repr(text))):
    folder.parse_value_map(text)


def bad_file_cases(root: pathlib.Path) -> dict[str, str]:
  """Each case breaks one pair in its own copy of the folder; returns the expected error pattern."""
  return {
    "unreadable": r"cannot read image .*s00\.png",
    "size": r"image .*s05\.png is 36x24 but its mask .*s05\.png is 30x24",
    "values": r"mask .*s02\.png has values \[99\] outside mask_value_map",
    "missing_mask": r"image .*s03\.png has no mask named s03\.\*",
    "colour_mask": r"mask .*s04\.png is a colour image",
    "truncated_image": r"cannot read image .*s01\.jpg: .*truncated",
    "truncated_mask": r"cannot read mask .*s06\.png: .*truncated",
  }


def truncate(path: pathlib.Path) -> None:
  """Keeps the first half of the file: the header still opens (checked here), the pixel data ends early."""
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with Image.open(path) as image:
    assert image.size == (W, H)


def break_pair(root: pathlib.Path, case: str) -> None:
  if case == "unreadable":
    (root / "images" / "s00.png").write_bytes(b"not an image")
  elif case == "size":
    write_pair(root, "s05", mask_size=(H, 30))
  elif case == "values":
    mask = RAW[bands()].copy()
    mask[0, 0] = 99
    Image.fromarray(mask).save(root / "masks" / "s02.png")
  elif case == "missing_mask":
    write_pair(root, "s03")
    (root / "masks" / "s03.png").unlink()
  elif case == "truncated_image":  # Noise, so that most of the JPEG is pixel data behind the header.
    noise = np.random.default_rng(2).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "images" / "s01.jpg", quality=95)
    truncate(root / "images" / "s01.jpg")
  elif case == "truncated_mask":
    truncate(root / "masks" / "s06.png")
  else:
    Image.fromarray(COLOURS[bands()]).save(root / "masks" / "s04.png")


BAD_FILE_CASES = ["unreadable", "size", "values", "missing_mask", "colour_mask", "truncated_image", "truncated_mask"]


@pytest.mark.parametrize("case", BAD_FILE_CASES)
def test_bad_files_are_clear_errors_or_logged_skips(root, case, caplog):
  break_pair(root, case)
  pattern = bad_file_cases(root)[case]
  with pytest.raises(folder.BadFileError, match=pattern + r".*skip_bad_files=True") as raised:
    data.num_examples(folder_config(root), "all")
  assert isinstance(raised.value, errors.UserError) and isinstance(raised.value, ValueError)
  with caplog.at_level(logging.WARNING):
    assert data.num_examples(folder_config(root, skip_bad_files=True), "all") == 9
  assert re.search(pattern, caplog.text)


@pytest.mark.parametrize("case", ["truncated_image", "truncated_mask"])
def test_skipped_truncated_pair_leaves_the_splits_and_the_rest_trains(root, case):
  break_pair(root, case)
  broken = {"truncated_image": "s01", "truncated_mask": "s06"}[case]
  config = folder_config(root, skip_bad_files=True, test_fraction=0.3)
  train, test = folder.split_pairs(config, "train"), folder.split_pairs(config, "test")
  assert len(train) + len(test) == 9 and broken not in {pair.stem for pair in train + test}
  assert data.num_examples(config, "train") == len(train) and data.num_examples(config, "test") == len(test)
  batch = next(iter(data.train_batches(config, global_batch_size=4, seed=0)))
  assert batch["image"].shape == (4, 24, 24, 3) and batch["mask"].shape == (4, 24, 24)
  images, masks = eval_all(config)
  assert images.shape == (9, 24, 24, 3) and masks.shape == (9, 24, 24)


def test_folder_decodes_images_as_predict_does(root):
  """A 16-bit PNG scales to 8 bits and an EXIF-rotated JPEG stands upright, as in `image_io.read_image`."""
  classes = bands()
  Image.fromarray(GREYS[classes].astype(np.uint16) * 257).save(root / "images" / "s00.png")  # 16-bit grey.
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: stored turned 90 degrees anticlockwise, shown turned back clockwise.
  for stem in ("s01", "s03"):  # s01's mask is stored upright; s03's is stored turned, with the same EXIF tag.
    Image.fromarray(np.ascontiguousarray(np.rot90(COLOURS[classes]))).save(
      root / "images" / f"{stem}.jpg", quality=95, exif=exif
    )
  (root / "images" / "s03.png").unlink()
  Image.fromarray(np.ascontiguousarray(np.rot90(RAW[classes]))).save(root / "masks" / "s03.png", exif=exif)
  table = folder._lookup_table(folder.parse_value_map(VALUE_MAP))
  for stem, suffix in (("s00", "png"), ("s01", "jpg"), ("s03", "jpg")):
    image_path = root / "images" / f"{stem}.{suffix}"
    pixels, mask = folder._load_pair(str(image_path).encode(), str(root / "masks" / f"{stem}.png").encode(), table)
    np.testing.assert_array_equal(pixels, image_io.read_image(image_path), err_msg=stem)
    np.testing.assert_array_equal(mask[..., 0], classes, err_msg=stem)
  images, masks = eval_all(folder_config(root))
  centres = [4, 12, 20]
  np.testing.assert_array_equal(np.round((images[0, 12, centres] + 1) * 127.5), GREYS[:, None].repeat(3, 1))
  for i in (1, 3):
    np.testing.assert_allclose(np.round((images[i, 12, centres] + 1) * 127.5), COLOURS, atol=8)
    np.testing.assert_array_equal(masks[i][:, centres], np.broadcast_to([0, 1, 2], (24, 3)))


def test_large_images_are_read_at_full_size(root, monkeypatch):
  """Prediction reads images over image_io.MAX_PIXELS downscaled; training must not, or they would not fit masks."""
  monkeypatch.setattr(image_io.read_image, "__defaults__", (100,))  # Any image here is over a 100-pixel default.
  assert data.num_examples(folder_config(root), "all") == 10
  table = folder._lookup_table(folder.parse_value_map(VALUE_MAP))
  image, mask = (str(root / kind / "s00.png").encode() for kind in ("images", "masks"))
  pixels, mask = folder._load_pair(image, mask, table)
  assert pixels.shape == (H, W, 3) and mask.shape == (H, W, 1)


def test_missing_folders_are_clear_errors(tmp_path):
  with pytest.raises(errors.ConfigError, match="needs --config.data.folder.root=DIR"):
    data.num_examples(folder_config(""), "train")
  with pytest.raises(data.DatasetNotFoundError, match="images.*is not a directory"):
    data.num_examples(folder_config(tmp_path), "train")
  with pytest.raises(errors.ConfigError, match="split 'validation' does not exist.*'train', 'test', 'all'"):
    data.num_examples(folder_config(tmp_path), "validation")
  (tmp_path / "images").mkdir()
  (tmp_path / "masks").mkdir()
  with pytest.raises(data.DatasetNotFoundError, match="no usable image/mask pairs"):
    data.num_examples(folder_config(tmp_path), "train")


def test_folder_problems_are_user_errors(root):
  """The CLI prints these without a traceback; Python callers still catch ValueError / FileNotFoundError."""
  Image.fromarray(COLOURS[bands()]).save(root / "images" / "s02.bmp")  # First: the folder's scan is cached.
  with pytest.raises(errors.ConfigError, match="s02.bmp and s02.jpg .* share the stem 's02'"):
    data.num_examples(folder_config(root), "train")
  (root / "images" / "s02.bmp").unlink()
  with pytest.raises(errors.ConfigError, match="mask_value_map='1=0'"):
    data.num_examples(folder_config(root, mask_value_map="1=0"), "train")
  with pytest.raises(errors.InputNotFoundError, match="split list .*nope.txt does not exist"):
    data.num_examples(folder_config(root, train_list="nope.txt"), "train")
  (root / "train.txt").write_text("s01\nnope\n")
  with pytest.raises(errors.ConfigError, match=r"1 stem\(s\) of .*train.txt have no usable image/mask pair"):
    data.num_examples(folder_config(root, train_list="train.txt"), "train")


def load_config(name: str):
  spec = importlib.util.spec_from_file_location(f"configs_{name}", REPO_ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_pets_sample_through_the_documented_folder_command(shared_dir, tmp_path):
  module = load_config("folder")
  config = module.get_config().data
  documented = dict(re.findall(r"--config\.data\.folder\.(\w+)=(\S+)", module.__doc__))
  assert documented.pop("root") == "DIR"  # The release's folder; the sample beside the repo has its layout.
  config.folder.update(documented, root=str(shared_dir / "data" / "pets_sample"))
  assert data.num_examples(config, "train") == 300 and data.num_examples(config, "test") == 298
  # The release's quirks: Abyssinian_34 is a GIF and Abyssinian_5 an RGBA PNG, both named .jpg.
  (tmp_path / "quirks.txt").write_text("Abyssinian_34\nAbyssinian_5\nBengal_1\n")
  config.folder.train_list = str(tmp_path / "quirks.txt")
  config.image_size = 32
  images, masks = eval_all(config, split="train")
  assert images.shape == (3, 32, 32, 3) and -1 <= images.min() < images.max() <= 1
  assert set(np.unique(masks[0])) == {1}  # Abyssinian_34's trimap is all background.
  assert set(np.unique(masks[1:])) == {0, 1, 2}


def test_membrane_config_reads_grayscale_em_slices(shared_dir):
  config = load_config("membrane").get_config("local").data
  config.image_size = 64
  assert data.num_examples(config, "train") == 24 and data.num_examples(config, "test") == 6
  images, masks = eval_all(config, split="test")
  assert images.shape == (6, 64, 64, 3)
  np.testing.assert_array_equal(images[..., 0], images[..., 2])  # Grey replicated to 3 channels.
  assert set(np.unique(masks)) == {0, 1} and 0.1 < masks.mean() < 0.35  # Membrane (class 1) is about 22%.


def _list_names(path: pathlib.Path) -> set[str]:
  """A split list's first column (the official lists add class ids)."""
  return {line.split()[0] for line in path.read_text().splitlines() if line.strip()}


@pytest.mark.parametrize("name", ["pets_sample", "pets_best"])
def test_quality_configs_train_and_evaluate_on_the_protocol_splits(shared_dir, name):
  """The protocol: the official trainval (300) / test (298) lists, or a 240 / 60 split of trainval that holds out
  every breed and never touches test."""
  module = load_config(name)
  test, val = module.get_config("local"), module.get_config("val,local")
  assert (data.num_examples(test.data, "train"), data.num_examples(test.data, "test")) == (300, 298)
  assert (data.num_examples(val.data, "train"), data.num_examples(val.data, "test")) == (240, 60)
  trainval = _list_names(pathlib.Path(test.data.folder.root) / test.data.folder.train_list)
  val_train, val_held_out = (
    _list_names(pathlib.Path(path)) for path in (val.data.folder.train_list, val.data.folder.test_list)
  )
  assert val_train | val_held_out <= trainval and not val_train & val_held_out
  assert {name.rsplit("_", 1)[0] for name in val_held_out} == {name.rsplit("_", 1)[0] for name in trainval}
  assert val.eval_every_steps < val.num_train_steps == test.num_train_steps  # Validation curves; test read once.
  with pytest.raises(errors.ConfigError, match="unknown variant 'tset'"):
    module.get_config("tset,local")


@pytest.mark.parametrize("name", ["pets_sample", "pets_best"])
def test_quality_configs_validation_folds_are_disjoint_and_cover_trainval(shared_dir, name):
  """:val0..:val4 hold out five disjoint 60-image fifths of trainval, each trained on the other 240; :val is :val0."""
  module = load_config(name)
  trainval = _list_names(pathlib.Path(module.get_config("local").data.folder.root) / "annotations/trainval.txt")
  held_out = []
  for fold in range(5):
    folder = module.get_config(f"val{fold},local").data.folder
    train, val = _list_names(pathlib.Path(folder.train_list)), _list_names(pathlib.Path(folder.test_list))
    assert len(val) == 60 and train == trainval - val
    held_out.append(val)
  assert set().union(*held_out) == trainval and sum(map(len, held_out)) == len(trainval)
  assert module.get_config("val,local").data.folder.to_dict() == module.get_config("val0,local").data.folder.to_dict()
  with pytest.raises(errors.ConfigError, match="unknown variant 'val5'"):
    module.get_config("val5")


@pytest.mark.parametrize("name", ["membrane", "pets_sample", "pets_best"])
def test_configs_read_the_copies_beside_the_repo_only_with_local(name):
  """Without `:local` the data folder is the user's to give and the weights are Keras' download; with it, both are
  the copies in ../shared."""
  module = load_config(name)
  public, local = module.get_config(), module.get_config("local")
  assert public.data.folder.root == "" and public.model.pretrained == "imagenet"
  shared = REPO_ROOT.parent / "shared"
  assert pathlib.Path(local.data.folder.root).parent == shared / "data"
  assert local.model.pretrained == str(shared / "weights" / "mobilenet_v2_1.0_224_no_top.imagenet.keras2.h5")
  with pytest.raises(errors.ConfigError, match="'nope' is unknown"):
    module.get_config("local,nope=1")
