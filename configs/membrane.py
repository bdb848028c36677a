"""The original U-Net paper's data: ISBI 2012 EM neuronal membranes, through the folder dataset.

What it does: segments membrane (class 1) from cell interior (class 0) in the 30 labelled 512x512 grayscale
slices at ../shared/data/isbi2012_membrane (labels are 0 = membrane, 255 = interior, hence the map "0:1,255:0"
that makes membrane the positive class, the paper's convention). The challenge's test slices have no labels, so
a seeded 20% of the training slices (6) is held out for evaluation. Grayscale is replicated to 3 channels for the
ImageNet encoder; random zoom/crop and flips stretch the 24 training slices, as the paper relied on augmentation.

Hardware and time: 24 slices at 256 px are 6 steps of 4 per epoch; on a CPU a few seconds per step.

Run from the repository root:
  python -m unet_jax.train --config configs/membrane.py --workdir runs/membrane \\
    --config.model.pretrained=../shared/weights/mobilenet_v2_1.0_224_no_top.imagenet.keras2.h5
"""

import ml_collections

from unet_jax import default_config


def get_config() -> ml_collections.ConfigDict:
  config = default_config.get_config()
  config.batch_size = 4
  config.num_epochs = 40

  config.model.num_classes = 2  # 0 cell interior, 1 membrane.
  config.model.pretrained = "imagenet"
  config.model.freeze_encoder = True

  config.data.name = "folder"
  config.data.image_size = 256
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.shuffle_buffer = 32
  config.data.augment.flip = True
  config.data.augment.scale_crop = True
  config.data.folder.root = "../shared/data/isbi2012_membrane"
  config.data.folder.images = "train/image"
  config.data.folder.masks = "train/label"
  config.data.folder.mask_value_map = "0:1,255:0"
  config.data.folder.test_fraction = 0.2
  config.data.folder.split_seed = 0
  return config
