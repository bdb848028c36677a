"""Your own images and masks: `<root>/images/NAME.jpg` paired with `<root>/masks/NAME.png` by file stem.

What it does: the pets recipe (frozen ImageNet MobileNetV2 encoder, 128 px, flips, Adam) on any folder of images
(JPEG/PNG/GIF/BMP/TIFF/WebP; RGB, RGBA, palette or grayscale) and masks (single-channel or palette images).
Set `mask_value_map` to turn raw mask values into class ids ("0:0,255:1" for binary masks, with
--config.model.num_classes=2), and split with list files or a seeded `test_fraction` (default 20% held out).
Unreadable or mismatched files are errors that name the file (or logged skips with skip_bad_files=True).

Example, on the real Oxford-IIIT Pet sample beside the repository (600 images in the official layout: trimaps under
annotations/, official split lists of 300 trainval / 298 test, a GIF and an RGBA PNG among the JPEGs), run from the
repository root:

  python -m unet_jax.train --config configs/folder.py --workdir runs/pets_sample \\
    --config.data.folder.root=../shared/data/pets_sample \\
    --config.data.folder.masks=annotations/trimaps \\
    --config.data.folder.train_list=annotations/trainval.txt \\
    --config.data.folder.test_list=annotations/test.txt \\
    --config.data.folder.mask_value_map=1:0,2:1,3:2 \\
    --config.model.pretrained=../shared/weights/mobilenet_v2_1.0_224_no_top.imagenet.keras2.h5

Hardware and time: 300 train images are 9 steps of 32 per epoch; on a CPU about as slow per image as configs/pets.py.
"""

import ml_collections

from unet_jax import default_config


def get_config() -> ml_collections.ConfigDict:
  config = default_config.get_config()
  config.batch_size = 32
  config.num_epochs = 30

  config.model.num_classes = 3
  config.model.pretrained = "imagenet"
  config.model.freeze_encoder = True

  config.data.name = "folder"
  config.data.image_size = 128
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.folder.root = ""  # Required: --config.data.folder.root=DIR.
  config.data.folder.images = "images"
  config.data.folder.masks = "masks"
  config.data.folder.mask_value_map = ""  # Raw values are the class ids.
  config.data.folder.test_fraction = 0.2
  return config
