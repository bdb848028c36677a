"""The TF tutorial's recipe on real Oxford-IIIT Pet photos, sized for a CPU: the fidelity protocol of issue 7.

What it reproduces: tensorflow.org/tutorials/images/segmentation on `../shared/data/pets_sample` (600 real photos
of 3 breeds, trimaps {1,2,3} -> {pet, background, border}): 128 px, the ImageNet MobileNetV2 (alpha 1.0) encoder
frozen, random horizontal flips, batch 16, Adam 1e-3, 300 steps, and the tutorial's epochs: every pass over the 300
training images ends with a batch of 12 (data.drop_remainder=False). Inputs are x / 127.5 - 1 (the encoder's own
range).

Modes (the part after ':' in --config):
  configs/pets_sample.py       trains on the official trainval list (300), evaluates the official test list (298)
                               once, at the end: the final figure of a recipe.
  configs/pets_sample.py:val   trains on 240 of trainval, evaluates the other 60 (configs/pets_sample_split/fold0,
                               a seeded per-breed 20% from bench/quality_split.py) every 100 steps: choose recipes
                               here, never on test.
  configs/pets_sample.py:valK  the same on fold K (K = 0..4; :val is :val0): five disjoint 60-image validation sets
                               that cover trainval, for differences one fold of 60 images cannot resolve.

Hardware and time: 6-7 minutes on one core of this 2-core machine (taskset, the other core busy), compilation and
the test eval included; 14-34 minutes when the machine was shared with several other jobs.
Expected result (bench/quality.md, finding 15): test pixel accuracy 0.87-0.88, mean IoU 0.67-0.71 depending on the
seed (seeds 0-2: 0.702 +- 0.010; seeds 0-6: 0.697 +- 0.015; border IoU 0.44), against the 0.881 / 0.705 issue 7
quotes for the TF tutorial's own Keras model and pipeline (0.708 over 7 seeds here, bench/quality_keras.py
--pipeline=tutorial). Dropping each epoch's partial batch (--config.data.drop_remainder=True, this config's stream
before session 8) averages 0.685 over seeds 0-2 (0.690 over 7).

Run from the repository root (paths to ../shared are resolved from this file, not the working directory):
  python -m unet_jax.train --config configs/pets_sample.py --workdir runs/pets_sample --config.seed=0
"""

import pathlib

import ml_collections

from unet_jax import default_config

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
SPLIT_DIR = REPO_ROOT / "configs" / "pets_sample_split"
NUM_FOLDS = len(list(SPLIT_DIR.glob("fold*")))  # As many as bench/quality_split.py wrote.
VAL_MODES = {"val": 0} | {f"val{fold}": fold for fold in range(NUM_FOLDS)}
MODES = ("test", *VAL_MODES)


def get_config(mode: str = "test") -> ml_collections.ConfigDict:
  if mode not in MODES:
    raise ValueError(f"--config configs/pets_sample.py:{mode}: unknown mode {mode!r}; use one of {MODES}.")
  validating = mode in VAL_MODES
  config = default_config.get_config()
  config.seed = 0
  config.batch_size = 16
  config.num_train_steps = 300
  config.optimizer = "adam"
  config.learning_rate = 1e-3
  config.log_every_steps = 25
  config.eval_every_steps = 100 if validating else 300  # Test is read once, after the last step.
  config.checkpoint_every_steps = 300

  config.model.num_classes = 3
  config.model.alpha = 1.0
  config.model.freeze_encoder = True
  config.model.pretrained = str(SHARED_DIR / "weights" / "mobilenet_v2_1.0_224_no_top.imagenet.keras2.h5")

  config.data.name = "folder"
  config.data.image_size = 128
  config.data.normalization = "minus_one_to_one"
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.augment.flip = True
  # The tutorial's `.batch(16)` ends every pass over the 300 images with a batch of 12; keeping it gains +0.008 +- 0.005
  # test mean IoU, seed by seed over 7 seeds (bench/quality.md, finding 15).
  config.data.drop_remainder = False
  folder = config.data.folder
  folder.root = str(SHARED_DIR / "data" / "pets_sample")
  folder.images = "images"
  folder.masks = "annotations/trimaps"
  folder.mask_value_map = "1:0,2:1,3:2"
  if validating:  # Absolute paths: the folder source joins them to root, which keeps them as they are.
    fold_dir = SPLIT_DIR / f"fold{VAL_MODES[mode]}"
    folder.train_list = str(fold_dir / "train.txt")
    folder.test_list = str(fold_dir / "val.txt")
  else:
    folder.train_list = "annotations/trainval.txt"
    folder.test_list = "annotations/test.txt"
  return config
