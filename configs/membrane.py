"""The original U-Net paper's data: ISBI 2012 EM neuronal membranes, through configs/folder.py.

What it trains: membrane (class 1) against cell interior (class 0) on the 30 labelled 512x512 grayscale slices of
the ISBI 2012 challenge, in the layout of github.com/zhixuhao/unet's data/membrane (train/image/N.png,
train/label/N.png; labels 0 = membrane, 255 = interior, hence the map "0:1,255:0" that makes membrane the positive
class, the paper's convention). The challenge's test slices have no labels, so a seeded 20% of the training slices
(6) is held out for evaluation. Grayscale is replicated to 3 channels for the ImageNet encoder; random zoom/crop and
flips stretch the 24 training slices, as the paper relied on augmentation.

Hardware and time: 24 slices at 256 px are 6 steps of 4 per epoch, 40 epochs; on a CPU a few seconds per step.

Run from the repository root, with DIR holding train/image and train/label:
  python -m unet_jax.train --config configs/membrane.py --workdir runs/membrane --config.data.folder.root=DIR
or with the copies beside the repository (../shared/data/isbi2012_membrane and the ImageNet .h5 of ../shared/weights):
  python -m unet_jax.train --config configs/membrane.py:local --workdir runs/membrane
"""

import pathlib
import runpy

import ml_collections

_CONFIGS = pathlib.Path(__file__).parent  # Config files, not a package: siblings load by path.
common = runpy.run_path(str(_CONFIGS / "common.py"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common["parse_arg"](arg, local=False)
  config = runpy.run_path(str(_CONFIGS / "folder.py"))["get_config"]()
  config.batch_size = 4
  config.num_epochs = 40

  config.model.num_classes = 2  # 0 cell interior, 1 membrane.

  config.data.image_size = 256
  config.data.shuffle_buffer = 32
  config.data.augment.scale_crop = True
  config.data.folder.images = "train/image"
  config.data.folder.masks = "train/label"
  config.data.folder.mask_value_map = "0:1,255:0"
  if arg.local:
    config.data.folder.root = str(common["LOCAL_DIR"] / "data" / "isbi2012_membrane")
    config.model.pretrained = str(common["LOCAL_IMAGENET_H5"])
  return config
