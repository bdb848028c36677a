"""The TF tutorial's recipe (configs/pets.py) on 600 real Oxford-IIIT Pet photos, sized for a CPU.

What it trains: configs/pets.py's model and recipe (128 px, the ImageNet MobileNetV2 (alpha 1.0) encoder frozen,
random horizontal flips, Adam 1e-3, inputs x / 127.5 - 1, every pass over the training images ending with its
partial batch, as the tutorial's `.batch()` ends it) at batch 16 for 300 steps, on the 3-breed subset of
Oxford-IIIT Pet: Abyssinian, american_bulldog and Bengal, 600 photos and trimaps in the release's layout with the
release's lists of those breeds, 300 trainval / 298 test (github.com/Naveen-Dodda/Sample_Pets_dataset). It is the
protocol of experiments/pets_quality/, which compares it with the tutorial's own Keras model and pipeline.

Variants (the part after ':' in --config; configs/common.py reads it):
  configs/pets_sample.py         trains on the official trainval list (300), evaluates the official test list (298)
                                 once, after the last step: a recipe's final figure.
  configs/pets_sample.py:val     trains on 240 of trainval, evaluates the other 60 every 100 steps
                                 (configs/pets_sample_split/fold0, a seeded fifth of each breed): choose recipes
                                 here, never on test.
  configs/pets_sample.py:valK    the same on fold K (K = 0..4; :val is :val0): five disjoint 60-image validation
                                 sets that cover trainval, for differences one fold cannot resolve.
  configs/pets_sample.py:local   any of these on the copies beside the repository (:local, :val,local, :val1,local,
                                 ...): ../shared/data/pets_sample and the ImageNet .h5 in ../shared/weights. Without
                                 `local`, --config.data.folder.root=DIR (the subset's folder) is required and Keras
                                 downloads its ImageNet weights.

Hardware and time: about 7 minutes on one core of a 2-vCPU Intel Xeon (Emerald Rapids), compilation and the test
eval included.
Expected result (experiments/pets_quality/): test pixel accuracy 0.88, mean IoU 0.70 +- 0.01 over seeds 0-2 (0.706,
0.709, 0.690; border IoU 0.44); 0.697 +- 0.015 over seeds 0-6. The tutorial's own Keras model on its own pipeline
scores 0.708 on the same data.

Run from the repository root, with DIR the subset's folder (images/, annotations/):
  python -m unet_jax.train --config configs/pets_sample.py --workdir runs/pets_sample --config.data.folder.root=DIR
or on the copies beside the repository:
  python -m unet_jax.train --config configs/pets_sample.py:local --workdir runs/pets_sample
"""

import pathlib
import runpy

import ml_collections

from unet_jax import errors

_CONFIGS = pathlib.Path(__file__).resolve().parent  # Config files, not a package: siblings load by path.
common = runpy.run_path(str(_CONFIGS / "common.py"))
SPLIT_DIR = _CONFIGS / "pets_sample_split"
NUM_FOLDS = len(list(SPLIT_DIR.glob("fold*")))  # As many as experiments/pets_quality/folds.py wrote.
VAL_VARIANTS = {"val": 0} | {f"val{fold}": fold for fold in range(NUM_FOLDS)}
VARIANTS = ("test", *VAL_VARIANTS)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common["parse_arg"](arg, variant="test", local=False)
  if arg.variant not in VARIANTS:
    raise errors.ConfigError(f"configs/pets_sample.py: unknown variant {arg.variant!r}; use one of {VARIANTS}.")
  validating = arg.variant in VAL_VARIANTS
  config = runpy.run_path(str(_CONFIGS / "pets.py"))["get_config"]()
  config.batch_size = 16
  config.num_train_steps = 300
  config.log_every_steps = 25
  config.eval_every_steps = 100 if validating else 300  # Test is read once, after the last step.
  config.checkpoint_every_steps = 300

  config.data.name = "folder"
  folder = config.data.folder
  folder.masks = "annotations/trimaps"
  folder.mask_value_map = "1:0,2:1,3:2"
  if validating:  # Absolute paths: the folder source joins them to root, which keeps them as they are.
    fold_dir = SPLIT_DIR / f"fold{VAL_VARIANTS[arg.variant]}"
    folder.train_list = str(fold_dir / "train.txt")
    folder.test_list = str(fold_dir / "val.txt")
  else:
    folder.train_list = "annotations/trainval.txt"
    folder.test_list = "annotations/test.txt"
  if arg.local:
    folder.root = str(common["LOCAL_DIR"] / "data" / "pets_sample")
    config.model.pretrained = str(common["LOCAL_IMAGENET_H5"])
  else:  # The download: Keras' 224 px ImageNet file, which `local` reads (at 128 px Keras would pick its 128 px one).
    config.model.imagenet_rows = 224
  return config
